"""NNX adaptive embedding and adaptive softmax with a gate on each cluster's embedding dims.

The NNX twins of :class:`flaxprune.AdaptiveEmbedding` and
:class:`flaxprune.AdaptiveSoftmax` (Baevski & Auli's adaptive inputs, Grave et
al.'s adaptive softmax, in Transformer-XL's projected form; FLOP, Wang et al.,
2020, Sec. 3, gates the shared dim of each ``E_i P_i``):

    embedding(t) = ((E_i[t - l_i] * z_i) @ P_i) * sqrt(d_proj)        t in cluster i
    logits_i(h)  = ((h @ P_i^T) * z_i) @ E_i^T + b_i

Params per cluster ``i``, named as in Linen: ``embedding_{i}: [n_i, d_i]``,
``projection_{i}: [d_i, d_proj]``, ``log_alpha_{i}: [d_i]``; a softmax adds
``bias_{i}: [n_i]`` and, with tail clusters, ``cluster_kernel: [d_proj,
clusters - 1]`` and ``cluster_bias``. The forward math and the spec check
are the Linen layers' own functions: :func:`flaxprune.layers.adaptive_embed`,
:func:`~flaxprune.layers.adaptive_log_probs`,
:func:`~flaxprune.layers.adaptive_nll` and
:func:`~flaxprune.layers.check_adaptive_spec`.

Tying: a tied softmax does not hold the embedding; it takes it per call
(``softmax(h, embedding=self.embed)``). Holding it would make the embedding's
params appear under whichever of the two paths NNX's graph walk reaches first,
the softmax's node would then hold a submodule no layout knows, and tree mode
(``graph=False``) refuses shared references altogether.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from flaxprune.gates import DEFAULT_GATE, GATE_PARAM, GateConfig, log_alpha_init
from flaxprune.layers.adaptive import AdaptiveSpec, adaptive_clusters, adaptive_embed, check_adaptive_spec
from flaxprune.layers.adaptive_loss import ClusterWeights, adaptive_log_probs, adaptive_nll
from flaxprune.nnx.base import GatedLayer, KeySource, check_gate, check_rngs, check_size, gate_stream

__all__ = ["AdaptiveEmbedding", "AdaptiveSoftmax"]

default_embedding_init = nn.initializers.normal(stddev=0.02)
default_projection_init = nn.initializers.lecun_normal()

_SHAPE_FIELDS = ("n_token", "d_embed", "d_proj", "cutoffs", "div_val", "div_freq")


class _Adaptive(GatedLayer):
    """The clusters, their spec and their weights: what the embedding and an untied softmax share."""

    def init_shape(self, name: str, n_token, d_embed, d_proj, cutoffs, div_val, div_freq, gate, rngs) -> None:
        where = f"{name}(n_token={n_token!r}, d_proj={d_proj!r})"
        self.d_proj = check_size(where, "d_proj", d_proj, " (the model width)")
        try:
            self.clusters = adaptive_clusters(n_token, d_embed, tuple(cutoffs), div_val, div_freq)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        self.n_token, self.d_embed, self.cutoffs = int(n_token), int(d_embed), tuple(int(c) for c in cutoffs)
        self.div_val, self.div_freq = div_val, int(div_freq)
        check_rngs(where, rngs)
        self.gate = check_gate(where, gate)

    def where(self) -> str:
        return f"{type(self).__name__}(n_token={self.n_token}, d_proj={self.d_proj})"

    def check_spec(self, spec: Any) -> AdaptiveSpec:
        return check_adaptive_spec(self.where(), spec, self.clusters, plan_wording=False)

    def weight_names(self, spec: AdaptiveSpec) -> dict[str, tuple[int, ...]]:
        out = {}
        for i, ((_, n_i, _), d_i) in enumerate(zip(self.clusters, self.check_spec(spec).dims)):
            if d_i:
                out[f"embedding_{i}"], out[f"projection_{i}"] = (n_i, d_i), (d_i, self.d_proj)
                if spec.gated:
                    out[f"{GATE_PARAM}_{i}"] = (d_i,)
        return out

    def init_params(self, shapes: dict[str, tuple[int, ...]], inits: dict[str, Any], rngs: nnx.Rngs) -> None:
        for name, shape in shapes.items():
            kind = name.rsplit("_", 1)[0]
            dtype = jnp.float32 if kind == GATE_PARAM else self.param_dtype
            setattr(self, name, nnx.Param(inits[kind](rngs.params(), shape, dtype)))

    def cluster_params(self) -> list[tuple[Any, Any, Any]]:
        """``[(embedding_i, projection_i, log_alpha_i), ...]`` as arrays; None where absent."""
        return [
            tuple(
                getattr(self, f"{k}_{i}")[...] if hasattr(self, f"{k}_{i}") else None
                for k in ("embedding", "projection", GATE_PARAM)
            )
            for i in range(len(self.clusters))
        ]

    def compute_dtype(self) -> Any:
        return self.dtype if self.dtype is not None else self.param_dtype


def _inits(gate: GateConfig, embedding_init, projection_init) -> dict[str, Any]:
    return {
        "embedding": embedding_init,
        "projection": projection_init,
        GATE_PARAM: log_alpha_init(gate.drop_rate, gate.init_std),
    }


class AdaptiveEmbedding(_Adaptive):
    """Adaptive input embedding with a hard-concrete gate on each cluster's dims.

    Args:
      n_token: vocabulary size.
      d_embed: embedding dim of cluster 0.
      d_proj: output (model) width.
      cutoffs: strictly increasing ids in ``(0, n_token)`` starting clusters 1, 2, ...
      div_val, div_freq: cluster ``i`` has ``d_embed // div_val**(i // div_freq)`` dims.
      gated: gate the dims (False: a plain adaptive embedding).
      spec: the structure to build (an :class:`~flaxprune.AdaptiveSpec`, the
        dims kept per cluster); overrides ``gated``.
      gate: hard-concrete settings.
      deterministic: default mode: evaluation mask (True) or gate samples (False).
      dtype, param_dtype, embedding_init, projection_init: as in the Linen layer.
      rngs: ``params`` initialises the weights; the layer keeps a fork of ``gates``.
    """

    def __init__(
        self,
        n_token: int,
        d_embed: int,
        d_proj: int,
        cutoffs: Sequence[int] = (),
        div_val: float = 1,
        div_freq: int = 1,
        *,
        gated: bool = True,
        spec: AdaptiveSpec | None = None,
        gate: GateConfig = DEFAULT_GATE,
        deterministic: bool | None = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Any = default_embedding_init,
        projection_init: Any = default_projection_init,
        rngs: nnx.Rngs,
    ):
        self.init_shape("AdaptiveEmbedding", n_token, d_embed, d_proj, cutoffs, div_val, div_freq, gate, rngs)
        self.deterministic, self.dtype, self.param_dtype = deterministic, dtype, param_dtype
        if spec is None:
            spec = AdaptiveSpec(dims=tuple(d for _, _, d in self.clusters), gated=bool(gated))
        self.init_params(self.param_names(spec), _inits(gate, embedding_init, projection_init), rngs)
        self.spec = spec
        self.rngs = gate_stream(rngs) if spec.gated else None

    def param_names(self, spec: AdaptiveSpec) -> dict[str, tuple[int, ...]]:
        return self.weight_names(spec)

    def __call__(self, ids: jax.Array, deterministic: bool | None = None, *, rngs: KeySource = None) -> jax.Array:
        """Embeds ``[...]`` integer token ids (ids outside ``[0, n_token)`` embed to zeros) to ``[..., d_proj]``.

        ``deterministic`` and ``rngs`` override the layer's for this call; a
        key passed as ``rngs`` gives cluster ``i`` the key ``fold_in(key, i)``.
        """
        weights = self.cluster_params()
        if any(la is not None for _, _, la in weights):
            deterministic = self.is_deterministic(deterministic)
        masked = [
            (emb, proj, None if la is None else self.gate_mask(la, deterministic, rngs, index=i))
            for i, (emb, proj, la) in enumerate(weights)
        ]
        return adaptive_embed(ids, self.clusters, masked, self.d_proj, self.compute_dtype())


class AdaptiveSoftmax(_Adaptive):
    """Adaptive softmax with a hard-concrete gate on each cluster's dims.

    Args:
      n_token, d_embed, d_proj, cutoffs, div_val, div_freq: as in
        :class:`AdaptiveEmbedding` (and equal to the tied embedding's).
      gated: gate the dims; ignored when tied (the gates are the embedding's).
      tied: the :class:`AdaptiveEmbedding` whose weights and gates to share
        (checked here; pass it again as ``embedding=`` to every call), or None
        for own weights.
      spec: an :class:`~flaxprune.AdaptiveSpec` for the untied weights.
      gate: hard-concrete settings of the untied gates (tied: the embedding's apply).
      deterministic: default mode: evaluation mask (True) or gate samples (False).
      dtype, param_dtype, embedding_init, projection_init, bias_init: as in the Linen layer.
      rngs: ``params`` initialises the weights; the layer keeps a fork of
        ``gates`` (a tied softmax draws its own sample of the shared gates).
    """

    def __init__(
        self,
        n_token: int,
        d_embed: int,
        d_proj: int,
        cutoffs: Sequence[int] = (),
        div_val: float = 1,
        div_freq: int = 1,
        *,
        gated: bool = True,
        tied: AdaptiveEmbedding | None = None,
        spec: AdaptiveSpec | None = None,
        gate: GateConfig = DEFAULT_GATE,
        deterministic: bool | None = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Any = default_embedding_init,
        projection_init: Any = default_projection_init,
        bias_init: Any = nn.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        self.init_shape("AdaptiveSoftmax", n_token, d_embed, d_proj, cutoffs, div_val, div_freq, gate, rngs)
        self.deterministic, self.dtype, self.param_dtype = deterministic, dtype, param_dtype
        self.tied = tied is not None
        inits = {**_inits(gate, embedding_init, projection_init), "bias": bias_init, "cluster": projection_init}
        if self.tied:
            self.check_tied(tied)
            if spec is not None:
                raise ValueError(
                    f"{self.where()}: a tied softmax takes its structure from the embedding; spec={spec!r}."
                )
        elif spec is None:
            spec = AdaptiveSpec(dims=tuple(d for _, _, d in self.clusters), gated=bool(gated))
        self.init_params(self.param_names(spec), inits, rngs)
        if len(self.clusters) > 1:  # bias_init, not projection_init, for cluster_bias
            self.cluster_bias = nnx.Param(bias_init(rngs.params(), (len(self.clusters) - 1,), param_dtype))
        self.spec = spec  # None when tied: the structure is the embedding's
        self.rngs = gate_stream(rngs) if (tied.spec.gated if self.tied else spec.gated) else None

    def param_names(self, spec: AdaptiveSpec) -> dict[str, tuple[int, ...]]:
        out = {} if self.tied else self.weight_names(spec)
        out.update({f"bias_{i}": (n_i,) for i, (_, n_i, _) in enumerate(self.clusters)})
        if len(self.clusters) > 1:
            out["cluster_kernel"] = (self.d_proj, len(self.clusters) - 1)
            out["cluster_bias"] = (len(self.clusters) - 1,)
        return out

    def init_params(self, shapes, inits, rngs) -> None:
        # cluster_kernel takes projection_init; cluster_bias is set by __init__ with bias_init.
        super().init_params({k: v for k, v in shapes.items() if k != "cluster_bias"}, inits, rngs)

    def plan_spec(self) -> AdaptiveSpec | None:
        return None if self.tied else self.spec

    def check_tied(self, tied: Any) -> None:
        if not isinstance(tied, AdaptiveEmbedding):
            raise ValueError(f"{self.where()}: tied={tied!r} must be a flaxprune.nnx.AdaptiveEmbedding or None.")
        for name in _SHAPE_FIELDS:
            mine, theirs = getattr(self, name), getattr(tied, name)
            if mine != theirs:
                raise ValueError(f"{self.where()}: {name}={mine!r} must equal the tied embedding's {name}={theirs!r}.")

    def masked_weights(
        self, deterministic: bool | None, rngs: KeySource, embedding: AdaptiveEmbedding | None
    ) -> list[ClusterWeights]:
        """Per cluster ``(embedding, projection, mask, bias)``, each mask drawn once."""
        if self.tied:
            if embedding is None:
                raise ValueError(
                    f"{self.where()} is tied: pass the AdaptiveEmbedding it was built with as embedding= to each call."
                )
            self.check_tied(embedding)
            weights, gate = embedding.cluster_params(), embedding.gate  # the mask follows the owner of log_alpha
        else:
            if embedding is not None:
                raise ValueError(f"{self.where()} holds its own weights: embedding= is only for a tied softmax.")
            weights, gate = self.cluster_params(), self.gate
        if any(la is not None for _, _, la in weights):
            deterministic = self.is_deterministic(deterministic)
        out = []
        for i, (emb, proj, la) in enumerate(weights):
            z = None if la is None else self.gate_mask(la, deterministic, rngs, index=i, gate=gate)  # [d_i]
            out.append((emb, proj, z, getattr(self, f"bias_{i}")[...]))
        return out

    def cluster_logits_params(self) -> tuple[Any, Any]:
        if len(self.clusters) == 1:
            return None, None
        return self.cluster_kernel[...], self.cluster_bias[...]

    def __call__(
        self,
        hidden: jax.Array,
        deterministic: bool | None = None,
        *,
        rngs: KeySource = None,
        embedding: AdaptiveEmbedding | None = None,
    ) -> jax.Array:
        """``[..., d_proj]`` hidden states -> ``[..., n_token]`` log-probabilities (to train, :meth:`nll`)."""
        kernel, bias = self.cluster_logits_params()
        weights = self.masked_weights(deterministic, rngs, embedding)
        return adaptive_log_probs(hidden, weights, kernel, bias, self.compute_dtype())

    def nll(
        self,
        hidden: jax.Array,
        targets: jax.Array,
        deterministic: bool | None = None,
        *,
        rngs: KeySource = None,
        embedding: AdaptiveEmbedding | None = None,
        chunk: int = 1024,
    ) -> jax.Array:
        """``-log p(targets)``, ``[...]`` float32 nats, without the full-vocabulary logits (``adaptive_nll``)."""
        if targets.shape != hidden.shape[:-1]:
            raise ValueError(
                f"{self.where()}: targets {targets.shape} must have the shape of hidden {hidden.shape} without "
                "its last axis."
            )
        kernel, bias = self.cluster_logits_params()
        flat = adaptive_nll(
            hidden.reshape(-1, hidden.shape[-1]),
            targets.reshape(-1),
            self.clusters,
            self.masked_weights(deterministic, rngs, embedding),
            kernel,
            bias,
            dtype=self.compute_dtype(),
            chunk=chunk,
        )
        return flat.reshape(targets.shape)
