"""The theoretical cost of one eval-mode forward pass of a whole model, read from its params.

A benchmark that compares measured speedups of a pruned model with the
theoretical one, ``flops(unpruned) / flops(reduced)``, needs the cost of the
*whole* model, not only of the matrices FLOP prunes (Wang, Wohlwend & Lei,
2020): the unpruned parts (attention scores, the recurrence, norms, the
output layer) bound the speedup that cutting the projections can give.
:func:`flops_per_token` counts one deterministic (eval-mode) forward pass of
an SRU, Transformer-XL or BERT model on ``[batch, seq_len]`` tokens, per
token, as a pure function of the config and the params: every projection's
cost is read from its node's shapes, so one function counts the gated model
(eval mask multiplies included), the ungated baseline, the dense model and
the reduced model :func:`flaxprune.shrink` returns (merged kernels, bias-only
layers and gathered inputs included). The config supplies only what shrink
leaves alone: widths, heads, memory length.

It follows the code of :mod:`flaxprune.models` op by op, with these conventions:

* a matmul ``[m, k] @ [k, n]`` is ``2 m k n`` (a multiply and an add per
  term); so a dense layer is ``2 in out`` per token, a factorized one
  ``2 in r + 2 r out``, plus ``r`` (or ``in``, input-gated) for the eval-mode
  gate multiply where ``log_alpha`` is present, and a bias adds ``out``;
* every elementwise add, sub, mul, div, neg, max (ReLU), select (masking)
  and every transcendental (exp, erfc, tanh, rsqrt) is 1 op per element, so
  sigmoid ``1 / (1 + exp(-x))`` is 4 (neg, exp, add, div) and the exact GELU
  ``0.5 x erfc(-x / sqrt 2)`` is 5 (neg, mul, erfc, mul, mul);
* a reduction (sum, max) over ``n`` elements is ``n`` (XLA's reduce combines
  each element into an initial value); a mean adds one division;
* softmax over ``n`` (``jax.nn.softmax``: max, sub, exp, sum, div) is
  ``5 n + 1``: its max also combines the initial ``-inf`` once per row;
* Flax's LayerNorm over ``n`` features: ``7 n + 7`` with its fast variance
  ``E[x^2] - E[x]^2`` (Transformer-XL), ``8 n + 4`` two-pass (BERT);
* 0 for data movement: embedding lookups (memory only; their index
  clamping too), reshapes, casts, the gather of kept inputs after surgery,
  Transformer-XL's ``rel_shift``, and dropout, the identity in eval mode.

Not counted, being bookkeeping on positions or gates rather than arithmetic on
activations, the same before and after pruning: building the attention masks,
the sinusoid table, the gates' eval masks (``O(n_gates)`` per call) and
scalar arithmetic. Most terms are per token; attention costs ``seq_len`` (and
Transformer-XL's memory) per token; Transformer-XL's ``r`` projection of the
position table runs once per call and BERT's pooler and classifier once per
sequence, so the per-token count of those divides by ``batch * seq_len``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from flaxprune.gates import GATE_PARAM
from flaxprune.layers.layout import shape_of, size
from flaxprune.models import BertConfig, SRUConfig, TransformerXLConfig
from flaxprune.param_tree import join_path, layout_of, node_at

__all__ = ["FlopCount", "FlopRow", "flops_per_token", "format_flops", "param_bytes", "theoretical_speedup"]

CONFIGS = (SRUConfig, TransformerXLConfig, BertConfig)

SIGMOID = 4  # neg, exp, add, div
GELU = 5  # neg, mul, erfc, mul, mul (jax.nn.gelu(approximate=False))
SOFTMAX = 5  # per element: max, sub, exp, sum, div; plus 1 per row (max with the initial -inf)


def layer_norm(n: int, fast_variance: bool) -> int:
    """Ops of Flax's ``LayerNorm`` over ``n`` features (one row), scale and bias included."""
    # mean (n + 1), [x^2 (n), mean (n + 1), var = max(0, mu2 - mu^2) (3)] or [x - mu (n), ^2 (n), mean (n + 1)],
    # x - mu (n), rsqrt(var + eps) (2), mul *= scale (n), y *= mul (n), y += bias (n).
    return 7 * n + 7 if fast_variance else 8 * n + 4


class FlopRow(NamedTuple):
    """One term of the count.

    Attributes:
      part: module path (``'layers_0/W'``) or the module a stage belongs to.
      op: what is counted (``'matmul'``, ``'gate'``, ``'bias'``, ``'softmax'``, ...).
      flops: its FLOPs over the whole forward pass on ``[batch, seq_len]`` tokens.
    """

    part: str
    op: str
    flops: int


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """The cost of one forward pass on ``[batch, seq_len]`` tokens, term by term.

    Attributes:
      rows: the terms, in the order the forward pass runs them.
      seq_len: tokens per sequence.
      batch: sequences per call.
    """

    rows: tuple[FlopRow, ...]
    seq_len: int
    batch: int

    @property
    def forward(self) -> int:
        """FLOPs of the whole forward pass (an exact integer)."""
        return sum(r.flops for r in self.rows)

    @property
    def total(self) -> float:
        """FLOPs per token: :attr:`forward` divided by ``batch * seq_len``."""
        return self.forward / (self.batch * self.seq_len)

    def by_op(self, op: str) -> int:
        """FLOPs of the whole forward pass in the rows whose op is ``op``."""
        return sum(r.flops for r in self.rows if r.op == op)


def format_flops(count: FlopCount) -> str:
    """Fixed-width text table of a :class:`FlopCount`: FLOPs per token and share of each row, then the total."""
    tokens = count.batch * count.seq_len
    width = max([24] + [len(r.part) for r in count.rows])
    header = f"{'part':<{width}} {'op':<16} {'FLOPs/token':>16} {'share':>7}"
    lines = [header, "-" * len(header)]
    for r in count.rows:
        share = r.flops / count.forward if count.forward else 0.0
        lines.append(f"{r.part or '<root>':<{width}} {r.op:<16} {r.flops / tokens:>16,.1f} {share:>7.1%}")
    lines.append("-" * len(header))
    where = f"seq_len={count.seq_len}" + (f" batch={count.batch}" if count.batch > 1 else "")
    lines.append(f"{'total':<{width}} {where:<16} {count.total:>16,.1f} {'100.0%':>7}")
    return "\n".join(lines)


def param_bytes(params: Any) -> int:
    """Bytes held by every leaf of a pytree (works on ``jax.eval_shape`` output too)."""
    leaves = jax.tree.leaves(params)
    return sum(size(x) * np.dtype(getattr(x, "dtype", None) or np.result_type(x)).itemsize for x in leaves)


def flops_per_token(params: Mapping[str, Any], config: Any, *, seq_len: int, batch: int = 1) -> FlopCount:
    """The cost of one eval-mode forward pass of the model ``config`` builds, with ``params``.

    Args:
      params: the model's params collection (``variables['params']``): gated,
        ungated, dense, or as :func:`flaxprune.shrink` returned them.
      config: the model's config: an ``SRUConfig``, ``TransformerXLConfig`` or
        ``BertConfig`` (a ``BertClassifier``'s params hold ``bert/``, a ``BertEncoder``'s not).
      seq_len: tokens per sequence (Transformer-XL attends over ``seq_len + mem_len``).
      batch: sequences per call; only the terms computed once per call
        (Transformer-XL's ``r`` projection) depend on it.

    Returns:
      The :class:`FlopCount`; its ``total`` is the FLOPs per token.

    Raises:
      ValueError: for an unknown config type, a ``seq_len`` or ``batch`` that
        is not an int >= 1 (``seq_len`` above BERT's ``max_position``), or
        params that lack what the model holds.
    """
    if not isinstance(config, CONFIGS):
        raise ValueError(
            f"flops_per_token: config is a {type(config).__name__}, not a model config; accepted: "
            f"{[c.__name__ for c in CONFIGS]} (from flaxprune.models)."
        )
    _check_size("seq_len", seq_len)
    _check_size("batch", batch)
    if isinstance(config, BertConfig) and seq_len > config.max_position:
        raise ValueError(
            f"flops_per_token: seq_len={seq_len} exceeds BertConfig.max_position={config.max_position}; "
            f"accepted: an int in [1, {config.max_position}]."
        )
    if not isinstance(params, Mapping):
        raise ValueError(f"flops_per_token: params must be a Flax params mapping, got {type(params).__name__}.")
    if set(params) == {"params"}:
        raise ValueError("flops_per_token: got the variables dict {'params': ...}; pass variables['params'].")
    if isinstance(config, SRUConfig):
        rows = _sru(params, config, batch * seq_len)
    elif isinstance(config, TransformerXLConfig):
        rows = _transformer_xl(params, config, batch, seq_len)
    else:
        rows = _bert(params, config, batch, seq_len)
    return FlopCount(tuple(r for r in rows if r.flops), seq_len, batch)


def theoretical_speedup(
    before_params: Mapping[str, Any],
    before_config: Any,
    after_params: Mapping[str, Any],
    after_config: Any,
    *,
    seq_len: int,
    batch: int = 1,
) -> float:
    """``flops(before) / flops(after)`` for one forward pass, e.g. the gated model and what shrink returned."""
    before = flops_per_token(before_params, before_config, seq_len=seq_len, batch=batch)
    after = flops_per_token(after_params, after_config, seq_len=seq_len, batch=batch)
    return before.forward / after.forward


def _check_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"flops_per_token: {name}={value!r} must be an int >= 1.")


def _require(params: Mapping[str, Any], path: str, config: Any) -> Any:
    found = node_at(params, path)
    if found is None:
        raise ValueError(
            f"flops_per_token: params have nothing at '{path}', which a {type(config).__name__} model holds; "
            "pass the params of the model this config builds (the pair shrink returned, or the original pair)."
        )
    return found


def _linear(params: Mapping[str, Any], path: str, rows: int) -> list[FlopRow]:
    """A projection's rows (matmul, eval-mode gate multiply, bias) applied to ``rows`` input rows.

    Reads the node: factors ``P, Q`` (``log_alpha`` when gated), an
    input-gated or dense ``kernel``, a bias alone (a layer shrink reduced to
    rank 0: ``zeros + bias``), or nothing (rank 0 without a bias).
    """
    node = node_at(params, path)
    if node is None:
        return []
    layout = layout_of(node, path)
    kind = layout.kind if layout is not None else None
    if kind is None and not (isinstance(node, Mapping) and set(node) <= {"bias"}):
        held = sorted(node) if isinstance(node, Mapping) else type(node).__name__
        raise ValueError(f"flops_per_token: '{path}' holds {held}, not a projection's params.")
    matmul = gate = 0
    if kind == "factorized":
        (n_in, rank), n_out = shape_of(node["P"]), shape_of(node["Q"])[1]
        matmul, gate = 2 * n_in * rank + 2 * rank * n_out, rank if GATE_PARAM in node else 0
    elif kind in ("input_gated", "dense"):
        n_in, n_out = shape_of(node["kernel"])
        matmul, gate = 2 * n_in * n_out, n_in if GATE_PARAM in node else 0
    elif kind is not None:
        raise ValueError(f"flops_per_token: '{path}' is a {kind} layer, which no model here has at that place.")
    bias = size(node["bias"]) if "bias" in node else 0
    return [FlopRow(path, op, rows * n) for op, n in (("matmul", matmul), ("gate", gate), ("bias", bias))]


# --- SRU -------------------------------------------------------------------------


def _sru(params: Mapping[str, Any], cfg: SRUConfig, tokens: int) -> list[FlopRow]:
    """``embed -> [W, recurrence] x n_layers -> output``, per the code of :mod:`flaxprune.models.sru`."""
    rows = []
    for layer in range(cfg.n_layers):
        prefix = f"layers_{layer}"
        d = size(_require(params, f"{prefix}/v_f", cfg))
        # W x: k = 3 blocks (x' = x) or 4 (x' = U3), read from W's output size; no bias.
        rows += _linear(params, f"{prefix}/W", tokens)
        rows += [
            FlopRow(prefix, "gate biases", tokens * 2 * d),  # U1 + b_f, U2 + b_r, once outside the scan
            # per step: f, r = sigmoid(U + v * c) (mul, add, sigmoid each), c = U0 + (c - U0) * f (3)
            FlopRow(prefix, "recurrence", tokens * (2 * (2 + SIGMOID) + 3) * d),
            FlopRow(prefix, "highway", tokens * 3 * d),  # h = x' + (c - x') * r
        ]
    _require(params, "output/kernel", cfg)
    return rows + _linear(params, "output", tokens)


# --- Transformer-XL --------------------------------------------------------------


def _transformer_xl(params: Mapping[str, Any], cfg: TransformerXLConfig, batch: int, qlen: int) -> list[FlopRow]:
    """Segment of ``qlen`` tokens over ``mem_len`` of memory, per :mod:`flaxprune.models.transformer_xl`."""
    vocab, d_model = shape_of(_require(params, "embed/embedding", cfg))
    heads, d_head = shape_of(_require(params, "r_w_bias", cfg))
    klen = qlen + cfg.mem_len
    tokens, scores = batch * qlen, batch * heads * qlen * klen
    norm = layer_norm(d_model, fast_variance=True)
    rows = [FlopRow("embed", "scale", tokens * d_model)]  # embed(tokens) * sqrt(d_model)
    for layer in range(cfg.n_layers):
        attn, ff = f"layers_{layer}/attn", f"layers_{layer}/ff"
        _require(params, attn, cfg)
        if cfg.pre_lnorm:
            rows.append(FlopRow(f"{attn}/norm", "layer norm", batch * klen * norm))  # over [mems; h]
        rows += _linear(params, f"{attn}/qkv", batch * klen)  # q, k, v of memory and segment alike
        rows += _linear(params, f"{attn}/r", klen)  # the position table: once per call, not per sequence
        rows += [
            FlopRow(attn, "query biases", 2 * tokens * heads * d_head),  # q + u, q + v
            FlopRow(attn, "scores AC", scores * 2 * d_head),
            FlopRow(attn, "scores BD", scores * 2 * d_head),  # rel_shift: a copy, 0
            FlopRow(attn, "add scale mask", scores * 3),  # (AC + BD) * scale, where(mask, ., min)
            FlopRow(attn, "softmax", scores * SOFTMAX + batch * heads * qlen),
            FlopRow(attn, "probs @ values", scores * 2 * d_head),
        ]
        rows += _linear(params, f"{attn}/o", tokens)
        rows.append(FlopRow(attn, "residual", tokens * d_model))
        if not cfg.pre_lnorm:
            rows.append(FlopRow(f"{attn}/norm", "layer norm", tokens * norm))
        if cfg.pre_lnorm:
            rows.append(FlopRow(f"{ff}/norm", "layer norm", tokens * norm))
        rows += _linear(params, f"{ff}/ff_in", tokens)
        rows.append(FlopRow(ff, "relu", tokens * cfg.d_inner))
        rows += _linear(params, f"{ff}/ff_out", tokens)
        rows.append(FlopRow(ff, "residual", tokens * d_model))
        if not cfg.pre_lnorm:
            rows.append(FlopRow(f"{ff}/norm", "layer norm", tokens * norm))
    if cfg.pre_lnorm:
        rows.append(FlopRow("final_norm", "layer norm", tokens * norm))
    return rows + [
        FlopRow("embed", "matmul", tokens * 2 * d_model * vocab),  # tied softmax: h @ embedding^T
        FlopRow("out_bias", "bias", tokens * vocab),
    ]


# --- BERT ------------------------------------------------------------------------


def _bert(params: Mapping[str, Any], cfg: BertConfig, batch: int, seq_len: int) -> list[FlopRow]:
    """``BertClassifier`` (params under ``bert/``) or ``BertEncoder``, per :mod:`flaxprune.models.bert`."""
    prefix = "bert" if "bert" in params else ""
    hidden, heads, head_dim = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    tokens, scores = batch * seq_len, batch * heads * seq_len * seq_len
    norm = layer_norm(hidden, fast_variance=False)
    emb = join_path(prefix, "embeddings")
    _require(params, f"{emb}/word_embeddings", cfg)
    rows = [
        FlopRow(emb, "add", tokens * 2 * hidden),  # word + position + token type; the lookups are 0
        FlopRow(f"{emb}/norm", "layer norm", tokens * norm),
    ]
    for layer in range(cfg.num_layers):
        base = join_path(prefix, f"encoder/layer_{layer}")
        attn = f"{base}/attention"
        _require(params, attn, cfg)
        for name in ("query", "key", "value"):
            rows += _linear(params, f"{attn}/{name}", tokens)
        rows += [
            FlopRow(attn, "scores", scores * 2 * head_dim),
            FlopRow(attn, "scale mask", scores * 2),  # / sqrt(head_dim), + mask_bias
            FlopRow(attn, "softmax", scores * SOFTMAX + batch * heads * seq_len),
            FlopRow(attn, "probs @ values", scores * 2 * head_dim),
        ]
        rows += _linear(params, f"{attn}/output", tokens)
        rows.append(FlopRow(attn, "residual", tokens * hidden))
        rows.append(FlopRow(f"{attn}/output_norm", "layer norm", tokens * norm))
        rows += _linear(params, f"{base}/intermediate", tokens)
        rows.append(FlopRow(f"{base}/intermediate", "gelu", tokens * GELU * cfg.intermediate_size))
        rows += _linear(params, f"{base}/output", tokens)
        rows.append(FlopRow(base, "residual", tokens * hidden))
        rows.append(FlopRow(f"{base}/output_norm", "layer norm", tokens * norm))
    pooler = join_path(prefix, "pooler")
    _require(params, pooler, cfg)
    rows += _linear(params, pooler, batch)  # on h_[CLS]: once per sequence
    rows.append(FlopRow(pooler, "tanh", batch * hidden))
    if prefix:
        rows += _linear(params, "classifier", batch)
    return rows
