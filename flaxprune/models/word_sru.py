"""Word-level SRU language model with a tied adaptive embedding and adaptive softmax.

FLOP's WikiText-103 model (Wang, Wohlwend & Lei, EMNLP 2020, Sec. 4.1 and
Table 2): the vocabulary, ordered by frequency, is split by ``cutoffs`` into
clusters; an :class:`~flaxprune.layers.AdaptiveEmbedding` maps words to
``d_model`` and an :class:`~flaxprune.layers.AdaptiveSoftmax` tied to it
(same tables, projections and gates) predicts the next word. Between them
``n_layers`` SRU layers (:class:`~flaxprune.models.sru.SRULayer`), every
``W`` factorized as ``P diag(z) Q``. FLOP gates each cluster's embedding
dimensions and each factorized component, and one Lagrangian constrains
their summed expected size: the gates decide how much of the budget the
vocabulary keeps, cluster by cluster, and how much the recurrence.

    tokens -> AdaptiveEmbedding -> dropout -> [SRULayer -> dropout] x n_layers -> AdaptiveSoftmax

Param paths: ``embed/{embedding_i, projection_i, log_alpha_i}``,
``layers_{l}/W/{P, Q, log_alpha}``, ``layers_{l}/{v_f, v_r, b_f, b_r}``,
``softmax/{bias_i, cluster_kernel, cluster_bias}`` (tied; untied it also
holds its own ``embedding_i``, ``projection_i`` and ``log_alpha_i``).

``__call__`` returns full log-probabilities (the interface every language
model here shares); training and evaluation use :meth:`token_nll`, which
never builds the tail clusters' logits for every token
(:mod:`flaxprune.layers.adaptive_loss`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxprune.layers import AdaptiveEmbedding, AdaptiveSoftmax
from flaxprune.layers.adaptive import adaptive_clusters
from flaxprune.models.sru import Carry, SRULayer, check_carry, check_config_int, zero_carry
from flaxprune.plan import Plan

__all__ = ["WordSRUConfig", "WordSRULanguageModel"]


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
    check_config_int("WordSRUConfig", name, value, low, allow_none)


@dataclasses.dataclass(frozen=True)
class WordSRUConfig:
    """Hyperparameters of :class:`WordSRULanguageModel`; defaults are FLOP's WikiText-103 model.

    Surgery returns ``dataclasses.replace(config, plan=new_plan)``.
    """

    vocab_size: int = 267_735  # WikiText-103's words (train, <eos> and <unk> included)
    d_model: int = 2048  # hidden size of every SRU layer, and d_proj of the adaptive layers
    n_layers: int = 12
    rank: int | None = 512  # rank of each factorized W (None: parameter-neutral default)
    d_embed: int | None = None  # cluster 0's embedding dims (None: d_model)
    cutoffs: tuple[int, ...] = (10_000, 20_000, 40_000, 60_000, 100_000)  # first ids of clusters 1, 2, ...
    div_val: float = 4  # cluster i has d_embed // div_val**(i // div_freq) dims ...
    div_freq: int = 2  # ... so the paper's six clusters have d, d, d/4, d/4, d/16, d/16
    tie_weights: bool = True  # the softmax reuses the embedding's tables, projections and gates
    prune_embeddings: bool = True  # gate the clusters' dims (False: only the recurrent layers are pruned)
    dropout: float = 0.1  # on the embedding and on every layer's output
    highway_bias: float = -3.0
    gated: bool = True  # False: the dense baseline (same shapes, no gates)
    loss_chunk: int = 1024  # tokens per step of the tail clusters' scan in token_nll
    scan_unroll: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    plan: Plan = Plan()

    def __post_init__(self):
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("d_model", self.d_model, 1)
        _check_int("n_layers", self.n_layers, 1)
        _check_int("rank", self.rank, 1, allow_none=True)
        _check_int("d_embed", self.d_embed, 1, allow_none=True)
        _check_int("loss_chunk", self.loss_chunk, 1)
        _check_int("scan_unroll", self.scan_unroll, 1)
        if isinstance(self.cutoffs, list):
            object.__setattr__(self, "cutoffs", tuple(self.cutoffs))
        try:
            adaptive_clusters(self.vocab_size, self.embed_features, self.cutoffs, self.div_val, self.div_freq)
        except ValueError as e:
            raise ValueError(
                f"WordSRUConfig: {e} With vocab_size={self.vocab_size}, pass cutoffs below it (the vocabulary is "
                "ordered by frequency: a cutoff is the first id of a rarer band)."
            ) from None
        if self.rank is not None and self.rank > self.d_model:
            raise ValueError(
                f"WordSRUConfig: rank={self.rank} must be None or in [1, d_model={self.d_model}]: every W is "
                f"[d_model, 3 * d_model] = [{self.d_model}, {3 * self.d_model}]."
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"WordSRUConfig: dropout={self.dropout!r} must be a float in [0, 1).")
        for name in ("tie_weights", "prune_embeddings", "gated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"WordSRUConfig: {name}={getattr(self, name)!r} must be True or False.")
        if not isinstance(self.plan, Plan):
            raise ValueError(f"WordSRUConfig: plan={self.plan!r} must be a flaxprune.Plan.")

    @property
    def embed_features(self) -> int:
        """Cluster 0's embedding dims: ``d_embed``, or ``d_model`` when it is None."""
        return self.d_model if self.d_embed is None else self.d_embed

    @property
    def clusters(self) -> tuple[tuple[int, int, int], ...]:
        """``((start_i, n_i, d_i), ...)`` of the adaptive vocabulary."""
        return adaptive_clusters(self.vocab_size, self.embed_features, self.cutoffs, self.div_val, self.div_freq)


class WordSRULanguageModel(nn.Module):
    """Adaptive embedding, ``n_layers`` factorized SRU layers, tied adaptive softmax (see the module docstring).

    The carry is ``{'c': [batch, n_layers, d_model]}`` float32, as in
    :class:`~flaxprune.models.sru.SRULanguageModel`. Rng streams in training
    mode: ``'gates'`` and ``'dropout'``.
    """

    config: WordSRUConfig

    def setup(self):
        cfg = self.config
        adaptive = dict(
            n_token=cfg.vocab_size,
            d_embed=cfg.embed_features,
            d_proj=cfg.d_model,
            cutoffs=tuple(cfg.cutoffs),
            div_val=cfg.div_val,
            div_freq=cfg.div_freq,
            gated=cfg.gated and cfg.prune_embeddings,
            plan=cfg.plan,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
        )
        self.embed = AdaptiveEmbedding(**adaptive)
        self.layers = [
            SRULayer(
                cfg.d_model,
                rank=cfg.rank,
                gated=cfg.gated,
                highway_bias=cfg.highway_bias,
                scan_unroll=cfg.scan_unroll,
                plan=cfg.plan,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                time_major=True,
            )
            for _ in range(cfg.n_layers)
        ]
        self.softmax = AdaptiveSoftmax(**adaptive, tied=self.embed if cfg.tie_weights else None)
        self.drop = nn.Dropout(cfg.dropout)

    def initial_carry(self, batch_size: int) -> Carry:
        """The zero state ``{'c': [batch_size, n_layers, d_model]}`` float32; works unbound."""
        return zero_carry("WordSRULanguageModel", batch_size, self.config.n_layers, self.config.d_model)

    def hidden(self, tokens: jax.Array, carry: Carry, deterministic: bool = True) -> tuple[jax.Array, Carry]:
        """``([time, batch, d_model] final hidden states, new carry)`` of a chunk of ``[batch, time]`` ids."""
        check_carry("WordSRULanguageModel", tokens, carry, self.config.n_layers, self.config.d_model)
        x = self.embed(tokens.T, deterministic)  # [time, batch, d_model]: time-major, the recurrence's layout
        x = self.drop(x, deterministic=deterministic)
        states = []
        for layer, sru in enumerate(self.layers):
            x, c = sru(x, carry["c"][:, layer], deterministic)  # [time, batch, d_model]
            x = self.drop(x, deterministic=deterministic)
            states.append(c)
        return x, {"c": jnp.stack(states, axis=1)}

    def __call__(self, tokens: jax.Array, carry: Carry, deterministic: bool = True) -> tuple[jax.Array, Carry]:
        """``(log_probs [batch, time, vocab_size] float32, carry)``: every word's log-probability."""
        x, carry = self.hidden(tokens, carry, deterministic)
        return jnp.swapaxes(self.softmax(x, deterministic), 0, 1).astype(jnp.float32), carry

    def token_nll(
        self, tokens: jax.Array, targets: jax.Array, carry: Carry, deterministic: bool = True
    ) -> tuple[jax.Array, Carry]:
        """``(nll [batch, time] float32 nats, carry)`` of ``targets``, without full-vocabulary logits."""
        x, carry = self.hidden(tokens, carry, deterministic)
        nll = self.softmax.nll(x, targets.T, deterministic, chunk=self.config.loss_chunk)  # [time, batch]
        return nll.T, carry
