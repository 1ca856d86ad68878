"""Adaptive input embedding and adaptive softmax with a gate on each cluster's embedding dims.

Baevski & Auli's adaptive inputs and Grave et al.'s adaptive softmax, in the
projected form of Transformer-XL (Dai et al., 2019): the vocabulary is split
by ``cutoffs`` into clusters ``[l_i, r_i)`` of ``n_i`` tokens, cluster ``i``
has an embedding table ``E_i: [n_i, d_i]`` with ``d_i = d_embed //
div_val**i`` and a projection ``P_i: [d_i, d_proj]`` to the model width.

FLOP (Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models",
EMNLP 2020, arXiv 1910.04732, Sec. 3) treats ``E_i P_i`` as one more
factorization and puts a hard-concrete gate ``z_i: [d_i]`` on the shared
dimension:

    embedding(t) = ((E_i[t - l_i] * z_i) @ P_i) * sqrt(d_proj)        t in cluster i
    logits_i(h)  = ((h @ P_i^T) * z_i) @ E_i^T + b_i

A zero gate removes column ``k`` of ``E_i`` and row ``k`` of ``P_i``, so each
gate costs ``n_i + d_proj`` weights. With tied weights the softmax reuses the
embedding's ``E_i``, ``P_i`` and ``log_alpha_i`` (the weights and their gates
are counted once) but draws its own gate sample. Surgery keeps the dims whose
evaluation mask is non-zero and folds the mask into the columns of ``E_i``,
which is exact for the embedding and for a tied softmax alike, since both
apply the same evaluation mask.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GATE_PARAM, GateConfig, gate_values, log_alpha_init
from flaxprune.layers.adaptive_loss import ClusterWeights, adaptive_log_probs, adaptive_nll
from flaxprune.plan import Plan

__all__ = [
    "AdaptiveEmbedding",
    "AdaptiveSoftmax",
    "AdaptiveSpec",
    "adaptive_clusters",
    "adaptive_embed",
    "check_adaptive_spec",
    "nll",
]

default_embedding_init = nn.initializers.normal(stddev=0.02)
default_projection_init = nn.initializers.lecun_normal()

# (embedding_i | None, projection_i | None, log_alpha_i | None) for one cluster.
ClusterParams = tuple[Any, Any, Any]


def adaptive_clusters(
    n_token: int, d_embed: int, cutoffs: Sequence[int] = (), div_val: float = 1, div_freq: int = 1
) -> tuple[tuple[int, int, int], ...]:
    """The clusters of an adaptive vocabulary, validated.

    Args:
      n_token: vocabulary size.
      d_embed: embedding dim of cluster 0.
      cutoffs: strictly increasing token ids in ``(0, n_token)`` where a new
        cluster starts; empty for a single cluster.
      div_val: cluster ``i`` has ``d_embed // div_val**(i // div_freq)`` dims.
      div_freq: how many clusters share a size before it is divided again (FLOP's WikiText-103 model:
        ``div_val=4, div_freq=2``, so six clusters of ``d, d, d/4, d/4, d/16, d/16`` dims).

    Returns:
      ``((start_i, n_i, d_i), ...)``, one triple per cluster.

    Raises:
      ValueError: naming the argument, its value and the accepted range.
    """
    if not (isinstance(n_token, (int, np.integer)) and n_token >= 1):
        raise ValueError(f"n_token={n_token!r} must be an int >= 1.")
    if not (isinstance(d_embed, (int, np.integer)) and d_embed >= 1):
        raise ValueError(f"d_embed={d_embed!r} must be an int >= 1.")
    if not div_val >= 1:
        raise ValueError(f"div_val={div_val!r} must be >= 1 (1 gives every cluster d_embed dims).")
    if isinstance(div_freq, bool) or not isinstance(div_freq, (int, np.integer)) or div_freq < 1:
        raise ValueError(f"div_freq={div_freq!r} must be an int >= 1 (1 divides at every cluster).")
    cuts = tuple(cutoffs)
    if not all(isinstance(c, (int, np.integer)) for c in cuts):
        raise ValueError(f"cutoffs={cutoffs!r} must be ints.")
    if any(b <= a for a, b in zip(cuts, cuts[1:])) or any(not 0 < c < n_token for c in cuts):
        raise ValueError(
            f"cutoffs={cutoffs!r} must be strictly increasing token ids in the open interval (0, n_token={n_token})."
        )
    bounds = (0,) + cuts + (n_token,)
    out = []
    for i in range(len(bounds) - 1):
        d_i = int(d_embed // div_val ** (i // div_freq))
        if d_i < 1:
            raise ValueError(
                f"d_embed={d_embed} with div_val={div_val!r} leaves cluster {i} of cutoffs={cutoffs!r} with "
                f"d_embed // div_val**{i // div_freq} = {d_i} dims; it must be >= 1: raise d_embed, lower div_val "
                "or use fewer cutoffs."
            )
        out.append((int(bounds[i]), int(bounds[i + 1] - bounds[i]), d_i))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class AdaptiveSpec:
    """Structure of one adaptive embedding or untied softmax after surgery.

    Attributes:
      dims: embedding dims kept per cluster; a cluster with 0 has no
        embedding or projection (its tokens embed to zeros; in the softmax
        its logits are the bias alone).
      gated: whether the dims carry gates.
    """

    dims: tuple[int, ...]
    gated: bool = False

    def __post_init__(self):
        dims = tuple(int(d) for d in self.dims)
        if not dims or any(d < 0 for d in dims):
            raise ValueError(
                f"AdaptiveSpec: dims={self.dims!r} must be a non-empty tuple of ints >= 0, one per cluster."
            )
        object.__setattr__(self, "dims", dims)


def _where(module: nn.Module) -> str:
    return f"{type(module).__name__} at '{'/'.join(module.path)}'"


def _clusters(module: nn.Module) -> tuple[tuple[int, int, int], ...]:
    if not (isinstance(module.d_proj, (int, np.integer)) and module.d_proj >= 1):
        raise ValueError(f"{_where(module)}: d_proj={module.d_proj!r} must be an int >= 1.")
    try:
        return adaptive_clusters(module.n_token, module.d_embed, module.cutoffs, module.div_val, module.div_freq)
    except ValueError as e:
        raise ValueError(f"{_where(module)}: {e}") from None


def check_adaptive_spec(
    where: str,
    spec: Any,
    clusters: Sequence[tuple[int, int, int]],
    *,
    cutoffs: Sequence[int] | None = None,
    plan_wording: bool = True,
) -> AdaptiveSpec:
    """``spec`` if it can describe an adaptive layer over ``clusters``: one dim count per cluster, none too large.

    Args:
      where: the layer, as the messages name it.
      spec: the structure to check.
      clusters: ``((start_i, n_i, d_i), ...)`` from :func:`adaptive_clusters`.
      cutoffs: the layer's ``cutoffs`` as the messages show them (None: the clusters' starts).
      plan_wording: word the errors for a spec that a :class:`~flaxprune.Plan`
        holds for a Linen module (and tell to pass shrink's plan); False: for
        a layer's ``spec=`` argument.

    Returns:
      ``spec``.

    Raises:
      ValueError: if ``spec`` is no ``AdaptiveSpec``, has another number of
        dims than there are clusters, or keeps more dims of a cluster than it has.
    """
    if cutoffs is None:
        cutoffs = tuple(start for start, _, _ in clusters[1:])
    if not isinstance(spec, AdaptiveSpec):
        if plan_wording:
            raise ValueError(f"{where}: the plan holds {spec!r}, expected an AdaptiveSpec.")
        raise ValueError(f"{where}: spec={spec!r} must be a flaxprune.AdaptiveSpec or None.")
    named = "the plan's AdaptiveSpec" if plan_wording else "spec"
    if len(spec.dims) != len(clusters):
        raise ValueError(
            f"{where}: {named} has {len(spec.dims)} dims but cutoffs={cutoffs!r} make {len(clusters)} clusters."
        )
    for i, (d, (_, _, d_i)) in enumerate(zip(spec.dims, clusters)):
        if d > d_i:
            why = (
                " (d_embed // div_val**(i // div_freq)); pass the plan that shrink returned with these params"
                if plan_wording
                else ""
            )
            raise ValueError(f"{where}: {named} keeps {d} dims of cluster {i}, which has {d_i}{why}.")
    return spec


def adaptive_embed(
    ids: jax.Array,
    clusters: Sequence[tuple[int, int, int]],
    weights: Sequence[tuple[Any, Any, Any]],
    d_proj: int,
    dtype: Any,
) -> jax.Array:
    """``((E_i[t - start_i] * z_i) @ P_i) * sqrt(d_proj)`` for each token ``t`` of cluster ``i``.

    Every token goes through every cluster's projection and a select keeps
    its own: static shapes under jit, at ``sum_i d_i * d_proj`` multiply-adds
    per token instead of boolean indexing.

    Args:
      ids: ``[...]`` integer token ids; ids outside every cluster embed to zeros.
      clusters: ``((start_i, n_i, d_i), ...)`` from :func:`adaptive_clusters`.
      weights: per cluster ``(embedding_i [n_i, d_i], projection_i [d_i, d_proj], mask_i [d_i])``;
        embedding and projection None for a cluster cut to 0 dims (its tokens embed to zeros), the mask
        None when ungated (already drawn: one per call).
      d_proj: the output width.
      dtype: computation dtype.

    Returns:
      ``[..., d_proj]`` embeddings.
    """
    out = jnp.zeros(ids.shape + (d_proj,), dtype)  # [..., d_proj]
    for (start, n_i, _), (emb, proj, mask) in zip(clusters, weights):
        if emb is None:
            continue
        local = ids - start
        inside = (local >= 0) & (local < n_i)  # [...]
        e = jnp.take(emb.astype(dtype), jnp.clip(local, 0, n_i - 1), axis=0)  # [..., d_i]
        if mask is not None:
            e = e * mask.astype(dtype)
        y = jnp.matmul(e, proj.astype(dtype))  # [..., d_proj]
        out = jnp.where(inside[..., None], y, out)
    return out * jnp.asarray(math.sqrt(d_proj), dtype)


def _spec(module: nn.Module, clusters) -> AdaptiveSpec:
    """The plan's spec at the module's path, or the defaults."""
    found = module.plan.spec(module.path)
    if found is None:
        return AdaptiveSpec(dims=tuple(d for _, _, d in clusters), gated=module.gated)
    return check_adaptive_spec(_where(module), found, clusters, cutoffs=module.cutoffs)


def _make_cluster_params(module: nn.Module, clusters, spec: AdaptiveSpec) -> tuple[ClusterParams, ...]:
    """Creates ``embedding_i``, ``projection_i`` and ``log_alpha_i`` (from ``setup``)."""
    gate = module.plan.gate
    out = []
    for i, ((_, n_i, _), d_i) in enumerate(zip(clusters, spec.dims)):
        if d_i == 0:
            out.append((None, None, None))
            continue
        emb = module.param(f"embedding_{i}", module.embedding_init, (n_i, d_i), module.param_dtype)
        proj = module.param(f"projection_{i}", module.projection_init, (d_i, module.d_proj), module.param_dtype)
        la = None
        if spec.gated:
            la = module.param(f"{GATE_PARAM}_{i}", log_alpha_init(gate.drop_rate, gate.init_std), (d_i,), jnp.float32)
        out.append((emb, proj, la))
    return tuple(out)


def _masks(module: nn.Module, weights: Sequence[ClusterParams], gate: GateConfig, deterministic: bool | None) -> list:
    """Per cluster the mask ``[d_i]`` (None where ungated), drawn once and sown as ``intermediates/gate_i``."""
    if any(la is not None for _, _, la in weights):
        deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
    out = []
    for i, (_, _, la) in enumerate(weights):
        z = None
        if la is not None:
            z = gate_values(module, la, gate, deterministic)  # [d_i]
            module.sow("intermediates", f"gate_{i}", z)
        out.append(z)
    return out


def _dtype(module: nn.Module) -> Any:
    return module.dtype if module.dtype is not None else module.param_dtype


class AdaptiveEmbedding(nn.Module):
    """Adaptive input embedding with a hard-concrete gate on each cluster's dims.

    Params per cluster ``i`` (``n_i`` tokens, ``d_i`` dims):
    ``embedding_{i}: [n_i, d_i]``, ``projection_{i}: [d_i, d_proj]`` and, when
    gated, ``log_alpha_{i}: [d_i]``. A cluster that surgery cut to 0 dims has
    no params and embeds its tokens to zeros.

    To tie an :class:`AdaptiveSoftmax` to it, build both in the parent's
    ``setup`` and pass this instance as the softmax's ``tied``.

    Attributes:
      n_token: vocabulary size.
      d_embed: embedding dim of cluster 0.
      d_proj: output (model) width.
      cutoffs: strictly increasing ids in ``(0, n_token)`` starting clusters 1, 2, ...
      div_val, div_freq: cluster ``i`` has ``d_embed // div_val**(i // div_freq)`` dims.
      gated: gate the dims (False: a plain adaptive embedding).
      plan: pruning plan; an :class:`AdaptiveSpec` under this module's path
        overrides the dims and ``gated``.
      deterministic: default gate mode (eval mask) when not given per call.
      dtype: computation dtype (default: ``param_dtype``).
      param_dtype: dtype of the embeddings and projections.
      embedding_init: initializer of ``embedding_{i}``.
      projection_init: initializer of ``projection_{i}``.
    """

    n_token: int
    d_embed: int
    d_proj: int
    cutoffs: tuple[int, ...] = ()
    div_val: float = 1
    div_freq: int = 1
    gated: bool = True
    plan: Plan = Plan()
    deterministic: bool | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Any = default_embedding_init
    projection_init: Any = default_projection_init

    def setup(self):
        self.clusters = _clusters(self)
        self.weights = _make_cluster_params(self, self.clusters, _spec(self, self.clusters))

    def cluster_params(self) -> list[ClusterParams]:
        """``[(embedding_i, projection_i, log_alpha_i), ...]``; None where absent (for a tied softmax)."""
        return list(self.weights)

    def __call__(self, ids: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """Embeds token ids.

        Args:
          ids: ``[...]`` integer token ids in ``[0, n_token)``; ids outside
            embed to zeros.
          deterministic: use the evaluation mask (True) or draw a gate sample
            from the ``gates`` rng stream (False).

        Returns:
          ``[..., d_proj]`` embeddings, scaled by ``sqrt(d_proj)``.
        """
        masks = _masks(self, self.weights, self.plan.gate, deterministic)
        weights = [(emb, proj, z) for (emb, proj, _), z in zip(self.weights, masks)]
        return adaptive_embed(ids, self.clusters, weights, self.d_proj, _dtype(self))


class AdaptiveSoftmax(nn.Module):
    """Adaptive softmax with a hard-concrete gate on each cluster's dims.

    Untied params per cluster ``i``: ``embedding_{i}: [n_i, d_i]``,
    ``projection_{i}: [d_i, d_proj]`` and, when gated, ``log_alpha_{i}:
    [d_i]`` (the names and shapes of :class:`AdaptiveEmbedding`, so one
    layout serves both); always ``bias_{i}: [n_i]``; with tail clusters,
    ``cluster_kernel: [d_proj, n_clusters]`` and ``cluster_bias:
    [n_clusters]``. Tied, only the biases and the cluster logits are its own.

    The head softmax runs over cluster 0's tokens plus one logit per tail
    cluster; ``log p(t) = head[t]`` in cluster 0 and ``head[n_0 + i - 1] +
    log_softmax(logits_i)[t - l_i]`` in cluster ``i``. The tail-cluster logits
    come from ``hidden`` directly, not (as in Transformer-XL) after cluster
    0's gated projection: that keeps every gate's cost local to its cluster,
    so pruning cluster 0 to nothing leaves the tails reachable and a gate's
    ``n_i + d_proj`` cost stays exact.

    Attributes:
      n_token, d_embed, d_proj, cutoffs, div_val, div_freq: as in
        :class:`AdaptiveEmbedding` (and equal to the tied embedding's).
      gated: gate the dims; ignored when tied (the gates are the embedding's).
      tied: the :class:`AdaptiveEmbedding` whose weights and gates to share,
        built in the same parent's ``setup``; None for own weights.
      plan: pruning plan; an :class:`AdaptiveSpec` under this module's path
        overrides the dims of an untied softmax.
      deterministic: default gate mode when not given per call.
      dtype: computation dtype (default: ``param_dtype``); the normalization
        runs in at least float32.
      param_dtype: dtype of the params.
      embedding_init, projection_init: initializers of the untied weights
        (``projection_init`` also initializes ``cluster_kernel``).
      bias_init: initializer of ``bias_{i}`` and ``cluster_bias``.
    """

    n_token: int
    d_embed: int
    d_proj: int
    cutoffs: tuple[int, ...] = ()
    div_val: float = 1
    div_freq: int = 1
    gated: bool = True
    tied: AdaptiveEmbedding | None = None
    plan: Plan = Plan()
    deterministic: bool | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Any = default_embedding_init
    projection_init: Any = default_projection_init
    bias_init: Any = nn.initializers.zeros_init()

    def setup(self):
        self.clusters = _clusters(self)
        if self.tied is None:
            self.weights = _make_cluster_params(self, self.clusters, _spec(self, self.clusters))
        else:
            self._check_tied()
        self.biases = tuple(
            self.param(f"bias_{i}", self.bias_init, (n_i,), self.param_dtype)
            for i, (_, n_i, _) in enumerate(self.clusters)
        )
        n_tail = len(self.clusters) - 1
        if n_tail:
            self.cluster_kernel = self.param(
                "cluster_kernel", self.projection_init, (self.d_proj, n_tail), self.param_dtype
            )
            self.cluster_bias = self.param("cluster_bias", self.bias_init, (n_tail,), self.param_dtype)

    def _check_tied(self):
        if not isinstance(self.tied, AdaptiveEmbedding):
            raise ValueError(f"{_where(self)}: tied={self.tied!r} must be an AdaptiveEmbedding or None.")
        for name in ("n_token", "d_embed", "d_proj", "cutoffs", "div_val", "div_freq"):
            mine, theirs = getattr(self, name), getattr(self.tied, name)
            if name == "cutoffs":
                mine, theirs = tuple(mine), tuple(theirs)
            if mine != theirs:
                raise ValueError(f"{_where(self)}: {name}={mine!r} must equal the tied embedding's {name}={theirs!r}.")
        if self.plan.spec(self.path) is not None:
            raise ValueError(
                f"{_where(self)}: a tied softmax takes its structure from the embedding at "
                f"'{'/'.join(self.tied.path)}', but the plan holds {self.plan.spec(self.path)!r} for it."
            )

    def _masked_weights(self, deterministic: bool | None) -> list[ClusterWeights]:
        """Per cluster ``(embedding, projection, mask, bias)``: the mask drawn once (own sample, own key)."""
        if self.tied is None:
            weights, gate = self.weights, self.plan.gate
        else:
            # The mask follows the owner of log_alpha, so surgery's fold stays exact.
            weights, gate = self.tied.cluster_params(), self.tied.plan.gate
        masks = _masks(self, weights, gate, deterministic)
        return [(emb, proj, z, bias) for (emb, proj, _), z, bias in zip(weights, masks, self.biases)]

    def _cluster_logits_params(self) -> tuple[Any, Any]:
        if len(self.clusters) == 1:
            return None, None
        return self.cluster_kernel, self.cluster_bias

    def __call__(self, hidden: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """Log-probabilities of every token (for training on large vocabularies, :meth:`nll`).

        Args:
          hidden: ``[..., d_proj]`` final hidden states.
          deterministic: use the evaluation mask (True) or draw a gate sample
            from the ``gates`` rng stream (False).

        Returns:
          ``[..., n_token]`` log-probabilities, normalized over the vocabulary.
        """
        kernel, bias = self._cluster_logits_params()
        return adaptive_log_probs(hidden, self._masked_weights(deterministic), kernel, bias, _dtype(self))

    def nll(
        self, hidden: jax.Array, targets: jax.Array, deterministic: bool | None = None, chunk: int = 1024
    ) -> jax.Array:
        """``-log p(targets)`` without the full-vocabulary logits (:func:`~flaxprune.layers.adaptive_nll`).

        Equal to ``nll(self(hidden), targets)``, at memory ``O(tokens * (d_proj + n_0 + clusters) + chunk *
        max n_i)`` instead of ``O(tokens * n_token)``.

        Args:
          hidden: ``[..., d_proj]`` final hidden states.
          targets: ``[...]`` integer token ids in ``[0, n_token)``.
          deterministic: as in :meth:`__call__`; one gate sample serves every token.
          chunk: tokens per step of the tail clusters' scan.

        Returns:
          ``[...]`` float32 nats.
        """
        if targets.shape != hidden.shape[:-1]:
            raise ValueError(
                f"{_where(self)}: targets {targets.shape} must have the shape of hidden {hidden.shape} without its "
                "last axis."
            )
        kernel, bias = self._cluster_logits_params()
        flat = adaptive_nll(
            hidden.reshape(-1, hidden.shape[-1]),
            targets.reshape(-1),
            self.clusters,
            self._masked_weights(deterministic),
            kernel,
            bias,
            dtype=_dtype(self),
            chunk=chunk,
        )
        return flat.reshape(targets.shape)


def nll(log_probs: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood of ``targets``.

    Args:
      log_probs: ``[..., n_token]`` log-probabilities.
      targets: ``[...]`` integer token ids.

    Returns:
      ``[...]`` ``-log_probs[..., targets]``.
    """
    return -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
