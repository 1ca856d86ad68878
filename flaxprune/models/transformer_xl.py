"""Transformer-XL language model with FLOP-factorized projections.

Dai et al., "Transformer-XL: Attentive Language Models Beyond a Fixed-Length
Context", ACL 2019: each layer attends over its own inputs from the previous
segments (the *memory*, no gradient through it) and the current segment, with
relative positional attention (Sec. 3.3, "attn_type 0")::

    A_ij = (q_i + u) . k_j  +  (q_i + v) . W_r R_{i-j}        (u = r_w_bias, v = r_r_bias)

where ``R`` is the sinusoid embedding of the distance ``i - j``. FLOP (Wang
et al., 2020, enwik8 experiments) prunes every projection of this model: here
each of ``qkv``, ``r``, ``o``, ``ff_in`` and ``ff_out`` is a
:class:`~flaxprune.FactorizedDense` built from ``config.plan``, so
``flaxprune.shrink(params, config)`` returns the smaller model's params and
config together.

The carry (the memory) is a dict with batch as the leading axis::

    {'mems':   [batch, n_layers, mem_len, d_model]  # each layer's inputs, most recent last
     'length': [batch] int32}                       # how many trailing positions of 'mems' are real

``length`` handles the start of a stream: memory slots before the last
``length`` are masked out of attention, so ``initial_carry`` (zeros, length 0)
gives exactly the outputs of a model without memory, and a training loop can
restart one stream by setting its row of ``length`` to 0.

Where this departs from the reference code (kimiyoung/transformer-xl):

* ``r_w_bias`` / ``r_r_bias`` are shared by all layers, as in the reference's
  default (``untie_r`` off) and its enwik8 scripts.
* With ``pre_lnorm=True`` a final LayerNorm (``final_norm``) normalises the
  last layer's output before the tied softmax; the reference has none, which
  leaves the residual stream's scale unbounded at the logits.
* Logits are dense over the vocabulary (tied embedding plus a bias): the
  byte-level enwik8 model has no adaptive softmax.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxprune.layers.factorized import FactorizedDense
from flaxprune.plan import Plan

__all__ = ["TransformerXL", "TransformerXLConfig", "rel_shift", "sinusoid_embedding"]

Carry = Mapping[str, jax.Array]  # {'mems': [batch, n_layers, mem_len, d_model], 'length': [batch] int32}

_INIT_STD = 0.02  # the reference's normal init for embeddings and the r_*_bias vectors
_LN_EPS = 1e-5  # PyTorch's LayerNorm default, as in the reference


@dataclasses.dataclass(frozen=True)
class TransformerXLConfig:
    """Hyperparameters of :class:`TransformerXL` (defaults: the enwik8 base model)."""

    vocab_size: int = 256  # tokens (256 bytes for enwik8)
    n_layers: int = 12  # transformer layers
    n_heads: int = 8  # attention heads
    d_model: int = 512  # residual stream width (= embedding width, tied)
    d_head: int = 64  # width of one head; n_heads * d_head need not equal d_model
    d_inner: int = 2048  # hidden width of the position-wise feed-forward
    mem_len: int = 512  # positions of memory per layer (0: a plain causal transformer)
    dropout: float = 0.1  # dropout on embeddings, positions, attention and FF outputs
    dropatt: float = 0.0  # dropout on attention probabilities
    pre_lnorm: bool = False  # LayerNorm before each sublayer (enwik8 TXL is post-norm)
    rank: int | None = None  # rank of every projection; None: FactorizedDense's parameter-neutral default
    gated: bool = True  # hard-concrete gates on every rank-1 component (False: dense low-rank baseline)
    dtype: Any = None  # computation dtype (None: from inputs and params); softmax and logits stay float32
    param_dtype: Any = jnp.float32  # dtype of the params
    plan: Plan = Plan()  # per-layer structure; shrink() returns a config with a new plan

    def __post_init__(self):
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "d_head", "d_inner"):
            _check_int(name, getattr(self, name), 1)
        _check_int("mem_len", self.mem_len, 0)
        if self.rank is not None:
            _check_int("rank", self.rank, 1)
            if self.rank > self.max_rank:
                nd = self.n_heads * self.d_head
                raise ValueError(
                    f"TransformerXLConfig: rank={self.rank!r} must be None (the parameter-neutral default) or an "
                    f"integer in [1, min(d_model, n_heads * d_head, d_inner)] = [1, {self.max_rank}]: every projection "
                    f"takes this rank and has at most min(in, out) components (qkv [{self.d_model}, {3 * nd}], "
                    f"r [{self.d_model}, {nd}], o [{nd}, {self.d_model}], ff_in [{self.d_model}, {self.d_inner}], "
                    f"ff_out [{self.d_inner}, {self.d_model}])."
                )
        for name in ("dropout", "dropatt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"TransformerXLConfig: {name}={value!r} must be a float in [0, 1).")
        for name in ("pre_lnorm", "gated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TransformerXLConfig: {name}={getattr(self, name)!r} must be True or False.")
        if not isinstance(self.plan, Plan):
            raise ValueError(f"TransformerXLConfig: plan={self.plan!r} must be a flaxprune.Plan.")

    @property
    def max_rank(self) -> int:
        """The largest ``rank`` every projection can take: the least ``min(in, out)`` among them.

        ``qkv [d_model, 3 n d]``, ``r [d_model, n d]``, ``o [n d, d_model]``, ``ff_in [d_model, d_inner]`` and
        ``ff_out [d_inner, d_model]`` (``n d = n_heads * d_head``): ``min(d_model, n_heads * d_head, d_inner)``.
        """
        return min(self.d_model, self.n_heads * self.d_head, self.d_inner)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"TransformerXLConfig: {name}={value!r} must be an integer >= {low}.")


def sinusoid_embedding(klen: int, d_model: int) -> jax.Array:
    """Sinusoid embeddings of the distances ``klen - 1, ..., 1, 0`` (descending).

    Returns:
      ``[klen, d_model]`` float32: ``[sin(pos * f), cos(pos * f)]`` with
      ``f = 10000^(-2i / d_model)``, as in Vaswani et al. (2017).
    """
    pos = jnp.arange(klen - 1, -1, -1, dtype=jnp.float32)  # [klen]
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))
    angles = pos[:, None] * inv_freq[None, :]  # [klen, ceil(d_model / 2)]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[:, :d_model]


def rel_shift(x: jax.Array) -> jax.Array:
    """Turns scores against descending distances into scores against keys.

    ``x[..., i, p]`` scores query ``i`` against the position embedding of
    distance ``klen - 1 - p``; the result's ``[..., i, j]`` scores it against
    key ``j``, whose distance is ``mlen + i - j`` (``mlen = klen - qlen``).
    Entries with ``j > mlen + i`` (the future) are garbage and must be masked.
    Transformer-XL's pad-and-reshape trick (Dai et al., 2019, App. B): no
    gather, only a copy.

    Args:
      x: ``[..., qlen, klen]`` with ``qlen <= klen``.

    Returns:
      ``[..., qlen, klen]``.
    """
    *lead, qlen, klen = x.shape
    padded = jnp.concatenate([jnp.zeros((*lead, qlen, 1), x.dtype), x], axis=-1)  # [..., qlen, klen + 1]
    padded = padded.reshape(*lead, klen + 1, qlen)[..., 1:, :]  # drop qlen entries: row i shifts by qlen-1-i
    return padded.reshape(*lead, qlen, klen)


class RelativeAttention(nn.Module):
    """Multi-head attention with relative positions over ``[memory; segment]``.

    Params: ``qkv``, ``r``, ``o``, ``norm``.
    """

    config: TransformerXLConfig

    @nn.compact
    def __call__(self, h, mems, pos_emb, r_w_bias, r_r_bias, mask, deterministic):
        # h: [batch, qlen, d_model]; mems: [batch, mlen, d_model]; pos_emb: [klen, d_model];
        # r_*_bias: [n_heads, d_head]; mask: [batch, 1, qlen, klen] bool.
        cfg = self.config
        batch, qlen, _ = h.shape
        mlen = mems.shape[1]
        klen = mlen + qlen
        n, d = cfg.n_heads, cfg.d_head
        dense = functools.partial(_dense, cfg, use_bias=False)
        norm = nn.LayerNorm(epsilon=_LN_EPS, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="norm")

        cat = jnp.concatenate([mems.astype(h.dtype), h], axis=1)  # [batch, klen, d_model]
        if cfg.pre_lnorm:
            cat = norm(cat)
        # One projection of the whole context: the gates are sampled once per call,
        # so q, k and v of memory and segment all see the same sample.
        heads = dense(3 * n * d, name="qkv")(cat, deterministic).reshape(batch, klen, 3, n, d)
        # Head-major [batch, n, len, d]: the batch dimensions lead in the attention products (XLA's CPU backend
        # runs those about 2x faster than the [batch, len, n, d] einsums).
        heads = jnp.moveaxis(heads, 1, 3)  # [batch, 3, n, klen, d]
        q = heads[:, 0, :, mlen:]  # [batch, n, qlen, d]: queries from the current segment only
        k, v = heads[:, 1], heads[:, 2]  # [batch, n, klen, d]
        r = dense(n * d, name="r")(pos_emb.astype(heads.dtype), deterministic).reshape(klen, n, d)

        ac = jnp.einsum("bnqd,bnkd->bnqk", q + r_w_bias[:, None].astype(q.dtype), k)  # content terms (a) + (c)
        bd = rel_shift(jnp.einsum("bnqd,knd->bnqk", q + r_r_bias[:, None].astype(q.dtype), r))  # terms (b) + (d)
        scores = (ac + bd).astype(jnp.float32) * (1.0 / math.sqrt(d))  # [batch, n, qlen, klen]
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.dropatt)(probs, deterministic=deterministic)
        out = jnp.einsum("bnqk,bnkd->bnqd", probs.astype(v.dtype), v)
        out = jnp.swapaxes(out, 1, 2).reshape(batch, qlen, n * d)
        out = dense(cfg.d_model, name="o")(out, deterministic)
        out = nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
        return h + out if cfg.pre_lnorm else norm(h + out)


class FeedForward(nn.Module):
    """Position-wise ``ff_out(relu(ff_in(x)))`` with residual and LayerNorm; params ``ff_in``, ``ff_out``, ``norm``."""

    config: TransformerXLConfig

    @nn.compact
    def __call__(self, h, deterministic):
        cfg = self.config
        norm = nn.LayerNorm(epsilon=_LN_EPS, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="norm")
        x = norm(h) if cfg.pre_lnorm else h
        x = nn.relu(_dense(cfg, cfg.d_inner, name="ff_in")(x, deterministic))  # [batch, qlen, d_inner]
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = _dense(cfg, cfg.d_model, name="ff_out")(x, deterministic)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        return h + x if cfg.pre_lnorm else norm(h + x)


class DecoderLayer(nn.Module):
    """One Transformer-XL layer: ``attn`` then ``ff``."""

    config: TransformerXLConfig

    @nn.compact
    def __call__(self, h, mems, pos_emb, r_w_bias, r_r_bias, mask, deterministic):
        h = RelativeAttention(self.config, name="attn")(h, mems, pos_emb, r_w_bias, r_r_bias, mask, deterministic)
        return FeedForward(self.config, name="ff")(h, deterministic)


def _dense(cfg: TransformerXLConfig, features: int, *, name: str, use_bias: bool = True) -> FactorizedDense:
    return FactorizedDense(
        features,
        rank=cfg.rank,
        use_bias=use_bias,
        gated=cfg.gated,
        plan=cfg.plan,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name=name,
    )


class TransformerXL(nn.Module):
    """Transformer-XL language model with segment-level recurrence.

    Params: ``embed`` (tied input/output embedding), ``out_bias: [vocab]``,
    ``r_w_bias``, ``r_r_bias: [n_heads, d_head]`` (shared by the layers),
    ``layers_{i}/attn/{qkv,r,o,norm}``, ``layers_{i}/ff/{ff_in,ff_out,norm}``
    and, with ``pre_lnorm``, ``final_norm``.

    The carry is ``{'mems': [batch, n_layers, mem_len, d_model], 'length':
    [batch] int32}``: each layer's inputs over the last ``mem_len`` positions
    (most recent last) and how many of them are real (see the module
    docstring). ``mem_len`` is static, so the carry keeps its shapes and
    dtypes from call to call (``jit``, ``lax.scan``).

    Randomness: rng ``'dropout'`` for dropout and ``'gates'`` for the gate
    samples, both only when ``deterministic=False``.
    """

    config: TransformerXLConfig

    def initial_carry(self, batch_size: int) -> Carry:
        """The memory at the start of a stream: zeros, none of it valid. Works on an unbound module.

        Returns:
          ``{'mems': [batch, n_layers, mem_len, d_model], 'length': [batch] int32}``.
        """
        cfg = self.config
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"TransformerXL.initial_carry: batch_size={batch_size!r} must be an integer >= 1.")
        dtype = cfg.dtype or cfg.param_dtype
        return {
            "mems": jnp.zeros((batch_size, cfg.n_layers, cfg.mem_len, cfg.d_model), dtype),
            "length": jnp.zeros((batch_size,), jnp.int32),
        }

    @nn.compact
    def __call__(self, tokens: jax.Array, carry: Carry, deterministic: bool = True) -> tuple[jax.Array, Carry]:
        """Runs one segment.

        Args:
          tokens: ``[batch, time]`` int token ids.
          carry: the memory from :meth:`initial_carry` or the previous call.
            No gradient flows into it.
          deterministic: eval mode: no dropout, the gates' evaluation mask.

        Returns:
          ``(logits, new_carry)``: ``[batch, time, vocab_size]`` float32, and
          the memory for the next segment (same structure, shapes and dtypes).

        Raises:
          ValueError: if ``tokens`` is not 2-D or ``carry`` does not match the config.
        """
        cfg = self.config
        mems, length = self._check(tokens, carry)
        mems = jax.lax.stop_gradient(mems)  # [batch, n_layers, mlen, d_model]
        qlen = tokens.shape[1]
        mlen, klen = cfg.mem_len, cfg.mem_len + qlen

        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=nn.initializers.normal(_INIT_STD),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="embed",
        )
        h = embed(tokens) * math.sqrt(cfg.d_model)  # a Python float keeps the embedding's dtype
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)  # [batch, qlen, d_model]
        pos_emb = sinusoid_embedding(klen, cfg.d_model).astype(h.dtype)
        pos_emb = nn.Dropout(cfg.dropout)(pos_emb, deterministic=deterministic)  # [klen, d_model]
        r_w_bias = self.param("r_w_bias", nn.initializers.normal(_INIT_STD), (cfg.n_heads, cfg.d_head), cfg.param_dtype)
        r_r_bias = self.param("r_r_bias", nn.initializers.normal(_INIT_STD), (cfg.n_heads, cfg.d_head), cfg.param_dtype)

        # Key j is visible to query i if it is not in the future (j <= mlen + i) and,
        # when in the memory, among its last `length` (real) positions.
        key = jnp.arange(klen)
        causal = key[None, :] <= mlen + jnp.arange(qlen)[:, None]  # [qlen, klen]
        real = key[None, :] >= mlen - length[:, None]  # [batch, klen]
        mask = causal[None, None, :, :] & real[:, None, None, :]  # [batch, 1, qlen, klen]

        new_mems = []
        for i in range(cfg.n_layers):
            layer_mems = mems[:, i]  # [batch, mlen, d_model]
            new_mems.append(jnp.concatenate([layer_mems.astype(h.dtype), h], axis=1)[:, qlen:])
            h = DecoderLayer(cfg, name=f"layers_{i}")(h, layer_mems, pos_emb, r_w_bias, r_r_bias, mask, deterministic)
        if cfg.pre_lnorm:
            h = nn.LayerNorm(epsilon=_LN_EPS, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="final_norm")(h)
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)

        out_bias = self.param("out_bias", nn.initializers.zeros_init(), (cfg.vocab_size,), cfg.param_dtype)
        logits = embed.attend(h).astype(jnp.float32) + out_bias.astype(jnp.float32)  # [batch, qlen, vocab]
        new_carry = {
            "mems": jax.lax.stop_gradient(jnp.stack(new_mems, axis=1).astype(mems.dtype)),
            "length": jnp.minimum(length + qlen, mlen).astype(jnp.int32),
        }
        return logits, new_carry

    def _check(self, tokens: jax.Array, carry: Carry) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if tokens.ndim != 2:
            raise ValueError(f"TransformerXL: tokens must be [batch, time], got shape {tokens.shape}.")
        if not isinstance(carry, Mapping) or set(carry) != {"mems", "length"}:
            got = sorted(carry) if isinstance(carry, Mapping) else type(carry).__name__
            raise ValueError(
                f"TransformerXL: carry must be {{'mems', 'length'}} from model.initial_carry(batch_size), got {got}."
            )
        batch = tokens.shape[0]
        expected = (batch, cfg.n_layers, cfg.mem_len, cfg.d_model)
        if carry["mems"].shape != expected:
            raise ValueError(
                f"TransformerXL: carry['mems'] has shape {carry['mems'].shape}, expected "
                f"[batch, n_layers, mem_len, d_model] = {expected}."
            )
        if carry["length"].shape != (batch,) or not jnp.issubdtype(carry["length"].dtype, jnp.integer):
            raise ValueError(
                f"TransformerXL: carry['length'] must be int [batch] = ({batch},), got "
                f"{carry['length'].dtype}{list(carry['length'].shape)}."
            )
        return carry["mems"], carry["length"]
