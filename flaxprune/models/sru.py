"""SRU language model, as FLOP prunes it on enwik8.

The Simple Recurrent Unit (Lei et al., "Simple Recurrent Units for Highly
Parallelizable Recurrence", EMNLP 2018) moves every matrix product out of the
recurrence: one projection ``U = W x`` per layer, then an elementwise scan

    f_t = sigmoid(U1_t + v_f * c_{t-1} + b_f)          forget gate
    r_t = sigmoid(U2_t + v_r * c_{t-1} + b_r)          highway (reset) gate
    c_t = f_t * c_{t-1} + (1 - f_t) * U0_t             = U0_t + (c_{t-1} - U0_t) * f_t
    h_t = r_t * c_t + (1 - r_t) * x'_t                 = x'_t + (c_t - x'_t) * r_t

where ``x'`` is the layer input when its size is ``d_model`` and a fourth
slice ``U3`` of ``W x`` otherwise. FLOP (Wang, Wohlwend & Lei, EMNLP 2020,
Sec. 4.1, enwik8) prunes exactly the ``W`` matrices: the first layer's
through a gate on each input feature (``HardConcreteLinear``, here
``InputGatedDense``), the others as ``P diag(z) Q`` with a gate per rank-1
component (``FactorizedDense``). The embedding, the gate vectors ``v``, the
biases and the output layer are not pruned.

Differences from the PyTorch ``sru`` package FLOP used (``rescale=False``,
no layer norm): dropout between layers is ordinary ``nn.Dropout`` (a fresh
mask per time step) rather than SRU's per-sequence mask on ``h``, and the
recurrence always runs in float32 whatever ``dtype`` the projections use.
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

from flaxprune.layers import BlockGatedDense, FactorizedDense, InputGatedDense, WeightGatedDense
from flaxprune.layers.gated_kernel import check_block
from flaxprune.methods import check_method
from flaxprune.plan import Plan

__all__ = [
    "SRUConfig",
    "SRULanguageModel",
    "SRULayer",
    "check_carry",
    "check_config_int",
    "forget_scan",
    "sru_recurrence",
    "zero_carry",
]

Carry = dict[str, jax.Array]  # {'c': [batch, n_layers, d_model] float32}


@dataclasses.dataclass(frozen=True)
class SRUConfig:
    """Hyperparameters of :class:`SRULanguageModel`; defaults are FLOP's enwik8 model.

    Surgery returns ``dataclasses.replace(config, plan=new_plan)``; every
    other field stays as it was.
    """

    vocab_size: int = 256  # number of token ids (bytes by default; FLOP's enwik8 has 205 distinct)
    d_model: int = 3056  # hidden size d of every SRU layer (FLOP enwik8's n_d)
    n_layers: int = 6  # number of stacked SRU layers (FLOP's depth)
    embed_dim: int | None = None  # None: FLOP's rule, vocab_size if vocab_size < d_model else d_model
    rank: int | None = 512  # rank of each factorized W (FLOP's n_proj); None: parameter-neutral default_rank
    dropout: float = 0.1  # on the embedding and on every layer's output
    highway_bias: float = -3.0  # initial b_r: sigmoid(-3) ~ 0.05, so h starts close to the highway input x'
    gated: bool = True  # False: dense baseline, every layer keeps its structure but carries no gates
    input_gated_first: bool = True  # layer 0's W is an InputGatedDense (FLOP); False: a FactorizedDense like the others
    scan_unroll: int = 1  # time steps per iteration of lax.scan (its `unroll`)
    dtype: Any = None  # computation dtype of the projections (None: from the inputs/params); the scan is float32
    param_dtype: Any = jnp.float32  # dtype of every parameter except log_alpha (always float32)
    plan: Plan = Plan()  # gate hyperparameters and per-layer structure; shrink() returns a new one
    # How every W is pruned (flaxprune.methods): 'flop' (above), 'agp' (dense kernels), 'agp_structured'
    # (P diag(d) Q, every layer factorized), 'l0' (a gate per weight), 'l0_block' (a gate per block).
    method: str = "flop"
    block: tuple[int, int] = (16, 16)  # 'l0_block': rows x columns of a gated block; must divide every W

    def __post_init__(self):
        def check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
            check_config_int("SRUConfig", name, value, low, allow_none)

        check_int("vocab_size", self.vocab_size, 1)
        check_int("d_model", self.d_model, 1)
        check_int("n_layers", self.n_layers, 1)
        check_int("embed_dim", self.embed_dim, 1, allow_none=True)
        check_int("rank", self.rank, 1, allow_none=True)
        check_int("scan_unroll", self.scan_unroll, 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"SRUConfig: dropout={self.dropout!r} must be a float in [0, 1).")
        if (
            isinstance(self.highway_bias, bool)
            or not isinstance(self.highway_bias, (int, float))
            or not math.isfinite(self.highway_bias)
        ):
            raise ValueError(f"SRUConfig: highway_bias={self.highway_bias!r} must be a finite float.")
        for name in ("gated", "input_gated_first"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SRUConfig: {name}={getattr(self, name)!r} must be True or False.")
        top = self.max_rank
        if self.method != "flop":
            top = None  # the rank only counts for FLOP's factorized layers (agp_structured: the default rank)
        if self.rank is not None and top is not None and self.rank > top:
            shapes = []
            if self.n_layers > 1:
                shapes.append(f"[d_model, 3 * d_model] = [{self.d_model}, {3 * self.d_model}] in layers 1..")
            if not self.input_gated_first:
                n_in, n_out = self._first_w_shape
                shapes.append(f"[embed, {n_out // self.d_model} * d_model] = [{n_in}, {n_out}] in layer 0")
            raise ValueError(
                f"SRUConfig: rank={self.rank!r} must be None (the parameter-neutral default) or an integer in "
                f"[1, {top}]: every factorized W takes this rank and has at most min(in, out) components "
                f"(W is {'; '.join(shapes)})."
            )
        if not isinstance(self.plan, Plan):
            raise ValueError(f"SRUConfig: plan={self.plan!r} must be a flaxprune.Plan.")
        check_method("SRUConfig", self.method)
        object.__setattr__(self, "block", tuple(self.block) if isinstance(self.block, list) else self.block)
        if self.method == "l0_block":
            for path, shape in self.prunable_shapes.items():
                check_block(f"SRUConfig (method='l0_block'), the W of '{path}'", self.block, shape)

    @property
    def prunable_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module path: (in, out)}`` of every ``W``: the dense matrices every method prunes (the dense reference)."""
        shapes = {"layers_0/W": self._first_w_shape}
        shapes.update({f"layers_{i}/W": (self.d_model, 3 * self.d_model) for i in range(1, self.n_layers)})
        return shapes
    @property
    def _first_w_shape(self) -> tuple[int, int]:
        """Layer 0's ``W``: ``[embed, k * d_model]``, ``k = 3`` when ``embed == d_model`` (no ``U3``), else 4."""
        k = 3 if self.embed_features == self.d_model else 4
        return self.embed_features, k * self.d_model

    @property
    def max_rank(self) -> int | None:
        """The largest ``rank`` every factorized ``W`` can take: the least ``min(in, out)`` among them.

        Layers 1.. factorize ``[d_model, 3 * d_model]``; layer 0 its ``[embed, k * d_model]`` unless it is
        input-gated. None when nothing is factorized (one input-gated layer): ``rank`` is then unused.
        """
        sizes = [self.d_model] if self.n_layers > 1 else []
        if not self.input_gated_first:
            sizes.append(min(self._first_w_shape))
        return min(sizes) if sizes else None

    @property
    def embed_features(self) -> int:
        """The embedding size: ``embed_dim``, or FLOP's rule when it is None."""
        if self.embed_dim is not None:
            return self.embed_dim
        return min(self.vocab_size, self.d_model)


def check_config_int(owner: str, name: str, value: Any, low: int, allow_none: bool = False) -> None:
    """Refuses a config field that is not an integer >= ``low`` (or None, when allowed), naming ``owner``."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        accepted = f"an integer >= {low}" + (" or None" if allow_none else "")
        raise ValueError(f"{owner}: {name}={value!r} must be {accepted}.")


def zero_carry(who: str, batch_size: int, n_layers: int, d_model: int) -> Carry:
    """The zero state ``{'c': [batch_size, n_layers, d_model]}`` float32 of a stack of SRU layers.

    Raises:
      ValueError: naming ``who`` (the model's ``initial_carry``) for a batch size that is not an integer >= 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{who}.initial_carry: batch_size={batch_size!r} must be an integer >= 1.")
    return {"c": jnp.zeros((batch_size, n_layers, d_model), jnp.float32)}


def check_carry(who: str, tokens: jax.Array, carry: Any, n_layers: int, d_model: int) -> None:
    """Refuses tokens that are not ``[batch, time]`` or a carry that is not ``{'c': [batch, n_layers, d_model]}``."""
    if tokens.ndim != 2:
        raise ValueError(f"{who}: tokens must be [batch, time], got shape {tokens.shape}.")
    expected = (tokens.shape[0], n_layers, d_model)
    if not isinstance(carry, Mapping) or set(carry) != {"c"} or carry["c"].shape != expected:
        got = {k: getattr(v, "shape", v) for k, v in carry.items()} if isinstance(carry, Mapping) else carry
        raise ValueError(
            f"{who}: carry must be {{'c': [batch, n_layers, d_model]}} = {{'c': {expected}}} "
            f"(see initial_carry), got {got}."
        )


def sru_recurrence(
    u: jax.Array,
    x_highway: jax.Array,
    c0: jax.Array,
    v_f: jax.Array,
    v_r: jax.Array,
    b_f: jax.Array,
    b_r: jax.Array,
    unroll: int = 1,
    time_major: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """The SRU elementwise recurrence over time, in float32.

    Only the state ``c`` is sequential: the loop over time computes ``f_t``
    and ``c_t`` from ``c_{t-1}``, and the highway gate and output,
    ``r_t = sigmoid(U2_t + b_r + v_r * c_{t-1})`` and ``h_t``, follow for
    all steps at once from the states. The loop's body is then a single
    small fusion over ``[batch, d]`` with two time-major inputs and one
    output (the values are those of the step-by-step form, bitwise: the
    same operations in the same order). Its gradient is hand-written
    (:func:`forget_scan`): the adjoint of the state is a *linear*
    recurrence, so the backward loop is one multiply-add per element and
    everything else is vectorized over time.

    Args:
      u: ``[batch, time, 3, d]``: ``U0`` (candidate), ``U1`` (forget), ``U2``
        (highway) pre-activations.
      x_highway: ``[batch, time, d]``: the highway input ``x'``.
      c0: ``[batch, d]``: the state before the first step.
      v_f, v_r, b_f, b_r: ``[d]``: the gates' state weights and biases.
      unroll: passed to ``jax.lax.scan`` (forward and backward loops).
      time_major: ``u``, ``x_highway`` and ``h`` are ``[time, batch, ...]``
        instead: the layout the loop reads, so no transpose is needed (what
        :class:`SRULanguageModel` uses).

    Returns:
      ``(h, c_last)``: ``h: [batch, time, d]`` (``[time, batch, d]`` when
      ``time_major``) and ``c_last: [batch, d]``, float32.
    """
    f32 = jnp.float32
    u = u.astype(f32)
    if not time_major:
        u = jnp.swapaxes(u, 0, 1)  # [time, batch, 3, d]
        x_highway = jnp.swapaxes(x_highway, 0, 1)
    c0 = c0.astype(f32)
    # The biases do not depend on c: add them once, outside the sequential loop.
    c = forget_scan(u[:, :, 0], u[:, :, 1] + b_f.astype(f32), c0, v_f.astype(f32), unroll)  # [time, batch, d]: c_t
    c_prev = jnp.concatenate([c0[None], c[:-1]], axis=0)  # c_{t-1}
    r = jax.nn.sigmoid(u[:, :, 2] + b_r.astype(f32) + v_r.astype(f32) * c_prev)
    x_highway = x_highway.astype(f32)
    h = x_highway + (c - x_highway) * r
    return (h if time_major else jnp.swapaxes(h, 0, 1)), c[-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def forget_scan(u0: jax.Array, u1: jax.Array, c0: jax.Array, v_f: jax.Array, unroll: int = 1) -> jax.Array:
    """SRU's state over time: ``c_t = u0_t + (c_{t-1} - u0_t) * sigmoid(u1_t + v_f * c_{t-1})``.

    Args:
      u0, u1: ``[time, batch, d]`` float32, time-major: the candidate and
        the forget gate's pre-activation (bias included).
      c0: ``[batch, d]``: ``c_{-1}``.
      v_f: ``[d]``.
      unroll: ``jax.lax.scan``'s ``unroll``.

    Returns:
      ``[time, batch, d]``: every ``c_t``.
    """
    return _forget_scan_fwd(u0, u1, c0, v_f, unroll)[0]


def _forget_scan_fwd(u0, u1, c0, v_f, unroll):
    def step(c, inputs):  # c: [batch, d]
        u0_t, u1_t = inputs
        c = u0_t + (c - u0_t) * jax.nn.sigmoid(u1_t + v_f * c)
        return c, c

    _, cs = jax.lax.scan(step, c0, (u0, u1), unroll=unroll)
    return cs, (u0, u1, c0, v_f, cs)


def _forget_scan_bwd(unroll, residuals, g):
    """The adjoint ``G_t = dL/dc_t`` (through later states too) is linear: ``G_t = g_t + a_{t+1} G_{t+1}``.

    With ``pre_t = u1_t + v_f c_{t-1}``, ``f_t = sigmoid(pre_t)`` and
    ``s_t = (c_{t-1} - u0_t) f_t (1 - f_t)`` (``dc_t / dpre_t``):
    ``a_t = dc_t / dc_{t-1} = f_t + s_t v_f``; then ``du0_t = G_t (1 - f_t)``,
    ``du1_t = G_t s_t``, ``dv_f = sum_t G_t s_t c_{t-1}``, ``dc0 = a_0 G_0``.
    """
    u0, u1, c0, v_f, cs = residuals
    c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)  # [time, batch, d]
    pre = u1 + v_f * c_prev
    f, one_minus_f = jax.nn.sigmoid(pre), jax.nn.sigmoid(-pre)
    s = (c_prev - u0) * f * one_minus_f
    a = f + s * v_f
    a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)  # a_{t+1}; G_T = 0

    def step(adjoint, inputs):  # adjoint: [batch, d]
        g_t, a_t1 = inputs
        adjoint = g_t + a_t1 * adjoint
        return adjoint, adjoint

    _, adjoints = jax.lax.scan(step, jnp.zeros_like(c0), (g, a_next), reverse=True, unroll=unroll)
    d_pre = adjoints * s
    return adjoints * one_minus_f, d_pre, a[0] * adjoints[0], (d_pre * c_prev).sum(axis=(0, 1))


forget_scan.defvjp(_forget_scan_fwd, _forget_scan_bwd)


def _uniform(bound: float) -> jax.nn.initializers.Initializer:
    """``U(-bound, bound)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class SRULayer(nn.Module):
    """One SRU layer: ``U = W x`` (a prunable flaxprune layer) and the recurrence.

    ``W`` has ``k * features`` outputs laid out as ``k`` blocks of
    ``features`` (``U0, U1, U2[, U3]``), no bias; ``k = 4`` when the input
    size differs from ``features`` (``U3`` is the highway input), else 3.
    Params: ``W/...`` (the layer's own), ``v_f, v_r: [d]`` initialised as in
    SRU 2.x, ``U(-sqrt(3/2), sqrt(3/2))`` (zero mean, variance 1/2),
    ``b_f: [d]`` zeros and ``b_r: [d]`` ``highway_bias``.

    Attributes:
      features: hidden size ``d``.
      input_gated: ``W`` is an ``InputGatedDense`` (else a ``FactorizedDense``).
      rank: ``FactorizedDense`` rank (None: its default).
      gated: whether ``W`` carries gates.
      highway_bias: initial ``b_r``.
      scan_unroll: ``lax.scan``'s ``unroll``.
      plan: passed to ``W``.
      time_major: ``x`` and ``h`` are ``[time, batch, ...]`` (the recurrence's own layout, no transposes).
      method: what ``W`` is (:mod:`flaxprune.methods`): ``'flop'`` (``input_gated`` or factorized),
        ``'agp'`` a dense kernel, ``'agp_structured'`` a factorized one with a learned diagonal (default
        rank), ``'l0'`` / ``'l0_block'`` a kernel with a gate per weight / per ``block``.
      block: ``'l0_block'``'s block shape.
    """

    features: int
    input_gated: bool = False
    rank: int | None = None
    gated: bool = True
    highway_bias: float = 0.0
    scan_unroll: int = 1
    plan: Plan = Plan()
    dtype: Any = None
    param_dtype: Any = jnp.float32
    time_major: bool = False
    method: str = "flop"
    block: tuple[int, int] = (16, 16)

    @nn.compact
    def __call__(self, x: jax.Array, c0: jax.Array, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        """Runs the layer over a sequence.

        Args:
          x: ``[batch, time, n_in]`` (``[time, batch, n_in]`` when ``time_major``).
          c0: ``[batch, features]``: the state before the first step.
          deterministic: eval mode (deterministic gate masks).

        Returns:
          ``(h, c_last)``: ``h: [batch, time, features]`` (``[time, batch, features]`` when
          ``time_major``) and ``c_last: [batch, features]``, float32.
        """
        d = self.features
        k = 3 if x.shape[-1] == d else 4
        common = dict(use_bias=False, gated=self.gated, plan=self.plan, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.method == "agp":
            w = nn.Dense(k * d, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="W")
            u = w(x)
        else:
            if self.method == "agp_structured":
                w = FactorizedDense(k * d, name="W", diagonal=True, **{**common, "gated": False})
            elif self.method == "l0":
                w = WeightGatedDense(k * d, name="W", **common)
            elif self.method == "l0_block":
                w = BlockGatedDense(k * d, block=self.block, name="W", **common)
            elif self.input_gated:
                w = InputGatedDense(k * d, name="W", **common)
            else:
                w = FactorizedDense(k * d, rank=self.rank, name="W", **common)
            u = w(x, deterministic)  # [batch, time, k * d] (or time-major)
        u = u.reshape(u.shape[:-1] + (k, d))  # [batch, time, k, d] (or time-major)
        x_highway = x if k == 3 else u[..., 3, :]
        v_init = _uniform(math.sqrt(1.5))
        v_f = self.param("v_f", v_init, (d,), self.param_dtype)
        v_r = self.param("v_r", v_init, (d,), self.param_dtype)
        b_f = self.param("b_f", nn.initializers.zeros_init(), (d,), self.param_dtype)
        b_r = self.param("b_r", nn.initializers.constant(self.highway_bias), (d,), self.param_dtype)
        return sru_recurrence(
            u[..., :3, :], x_highway, c0, v_f, v_r, b_f, b_r, unroll=self.scan_unroll, time_major=self.time_major
        )


class SRULanguageModel(nn.Module):
    """FLOP's enwik8 SRU language model: embedding, ``n_layers`` SRU layers, output layer.

    ``tokens -> Embed -> dropout -> [SRULayer -> dropout] x n_layers -> Dense -> logits``.
    The embedding and the output kernel are initialised ``U(-sqrt(3/vocab),
    sqrt(3/vocab))`` as in FLOP's script; the output bias is zero.

    Param paths: ``embed/embedding``, ``layers_{l}/W/...`` (``kernel`` and
    ``log_alpha`` for the input-gated first layer, ``P``, ``Q``,
    ``log_alpha`` for factorized ones), ``layers_{l}/{v_f,v_r,b_f,b_r}``,
    ``output/{kernel,bias}``.

    The carry is ``{'c': [batch, n_layers, d_model]}`` float32, batch
    leading so it shards along the data axis. The model does not stop
    gradients through it: for truncated backpropagation through time the
    caller applies ``jax.lax.stop_gradient`` to the carry between steps.

    Rng streams in training mode (``deterministic=False``): ``'gates'`` for
    the hard-concrete samples and ``'dropout'``; eval mode needs none.
    """

    config: SRUConfig

    def initial_carry(self, batch_size: int) -> Carry:
        """The zero state ``{'c': [batch_size, n_layers, d_model]}`` float32; works unbound."""
        return zero_carry("SRULanguageModel", batch_size, self.config.n_layers, self.config.d_model)

    @nn.compact
    def __call__(self, tokens: jax.Array, carry: Carry, deterministic: bool = True) -> tuple[jax.Array, Carry]:
        """Runs the model over a chunk of a sequence.

        Args:
          tokens: ``[batch, time]`` int token ids.
          carry: the state after the previous chunk, ``{'c': [batch, n_layers, d_model]}``
            (:meth:`initial_carry` at the start of a sequence).
          deterministic: eval mode: no dropout and the gates' evaluation mask.

        Returns:
          ``(logits, carry)``: ``logits: [batch, time, vocab_size]`` float32 and
          the state after the last token (not stop-gradient'ed).

        Raises:
          ValueError: if ``tokens`` is not 2-D or the carry does not match the
            batch and the config.
        """
        cfg = self.config
        check_carry("SRULanguageModel", tokens, carry, cfg.n_layers, cfg.d_model)
        init = _uniform(math.sqrt(3.0 / cfg.vocab_size))
        x = nn.Embed(
            cfg.vocab_size,
            cfg.embed_features,
            embedding_init=init,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="embed",
        )(tokens.T)  # [time, batch, embed]: time-major throughout, the layout of the recurrence's loop
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        states = []
        for layer in range(cfg.n_layers):
            x, c = SRULayer(
                cfg.d_model,
                input_gated=layer == 0 and cfg.input_gated_first,
                rank=cfg.rank,
                gated=cfg.gated,
                highway_bias=cfg.highway_bias,
                scan_unroll=cfg.scan_unroll,
                plan=cfg.plan,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                time_major=True,
                method=cfg.method,
                block=cfg.block,
                name=f"layers_{layer}",
            )(x, carry["c"][:, layer], deterministic)  # [time, batch, d_model]
            x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
            states.append(c)
        logits = nn.Dense(
            cfg.vocab_size, kernel_init=init, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="output"
        )(x)
        return jnp.swapaxes(logits, 0, 1).astype(jnp.float32), {"c": jnp.stack(states, axis=1)}
