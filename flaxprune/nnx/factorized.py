"""NNX ``FactorizedDense``: ``y = ((x @ P) * d * z) @ Q + b`` with one gate per rank-1 component.

The NNX twin of :class:`flaxprune.FactorizedDense` (FLOP, Wang et al., 2020,
Sec. 3.2: ``W = P diag(z) Q``). Its params carry the Linen layer's names and
shapes (``P: [in, rank]``, ``Q: [rank, out]``, ``bias: [out]``, ``log_alpha:
[rank]``, ``diag: [rank]``; after surgery ``kernel: [in, out]``), so its
``nnx.state(layer, nnx.Param)`` is the node that size accounting and
:func:`flaxprune.shrink` read; its structure is a
:class:`~flaxprune.FactorizedSpec`, the value a Linen plan holds.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen.dtypes import promote_dtype

from flaxprune.gates import DEFAULT_GATE, GATE_PARAM, GateConfig, log_alpha_init
from flaxprune.layers.factorized import (
    DIAGONAL_PARAM,
    FactorizedSpec,
    check_factorized_rank,
    check_factorized_spec,
    default_rank,
    factorized_apply,
)
from flaxprune.nnx.base import GatedLayer, KeySource, check_gate, check_rngs, check_size, gate_stream

__all__ = ["FactorizedDense", "factorized_spec"]

default_kernel_init = nn.initializers.lecun_normal()

_SPEC_FIX = "pass the spec that shrink gave this layer (flaxprune.nnx.plan_of(model).spec(path))"


def factorized_spec(
    where: str, in_features: int, out_features: int, rank: Any, gated: bool, diagonal: bool, spec: Any
) -> FactorizedSpec:
    """The structure a layer builds: ``spec`` (validated) or the one ``rank``, ``gated``, ``diagonal`` give.

    Raises:
      ValueError: if ``spec`` is no ``FactorizedSpec`` or has more than
        ``min(in, out)`` components, or ``rank`` is not in ``[1, min(in, out)]``.
    """
    if spec is not None:
        return check_factorized_spec(where, in_features, out_features, spec, plan_wording=False, fix=_SPEC_FIX)
    if rank is None:
        return FactorizedSpec(rank=default_rank(in_features, out_features), gated=gated, diagonal=diagonal)
    rank = check_factorized_rank(where, in_features, out_features, rank, plan_wording=False)
    return FactorizedSpec(rank=rank, gated=gated, diagonal=diagonal)


class FactorizedDense(GatedLayer):
    """A dense layer factorized as ``P diag(z) Q`` with hard-concrete gates ``z``; drop-in for ``nnx.Linear``.

    Args:
      in_features: input size.
      out_features: output size.
      rank: number of components; default ``in*out // (in+out)`` (as many
        parameters as the dense matrix).
      use_bias: add a bias.
      gated: gate the components (False: a plain low-rank layer).
      diagonal: learn a real diagonal ``diag: [rank]`` (ones at init) between the factors.
      per_example_gates: one gate sample per example (leading axis of the
        input) instead of one per call shared by the batch.
      spec: the structure to build (a :class:`~flaxprune.FactorizedSpec`,
        e.g. from ``plan_of(shrunk_model).spec(path)``); overrides ``rank``,
        ``gated`` and ``diagonal``.
      gate: hard-concrete settings (the Linen plan's ``gate``).
      deterministic: default mode: evaluation mask (True) or gate samples (False).
      dtype, param_dtype, precision, kernel_init, bias_init: as in the Linen layer.
      rngs: ``params`` initialises the weights; the layer keeps a fork of
        ``gates`` (or of the default stream) for its samples.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | None = None,
        *,
        use_bias: bool = True,
        gated: bool = True,
        diagonal: bool = False,
        per_example_gates: bool = False,
        spec: FactorizedSpec | None = None,
        gate: GateConfig = DEFAULT_GATE,
        deterministic: bool | None = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Any = default_kernel_init,
        bias_init: Any = nn.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        where = f"FactorizedDense({in_features!r} -> {out_features!r})"
        self.in_features = check_size(where, "in_features", in_features, " (the layer's input size)")
        self.out_features = check_size(where, "out_features", out_features, " (the layer's output size)")
        rngs = check_rngs(where, rngs)
        self.gate = check_gate(where, gate)
        self.spec = factorized_spec(where, self.in_features, self.out_features, rank, gated, diagonal, spec)
        self.use_bias = bool(use_bias)
        self.per_example_gates = bool(per_example_gates)
        self.deterministic = deterministic
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        shapes = self.param_names(self.spec)
        for name, shape in shapes.items():
            if name == "bias":
                value = bias_init(rngs.params(), shape, param_dtype)
            elif name == GATE_PARAM:
                value = log_alpha_init(gate.drop_rate, gate.init_std)(rngs.params(), shape, jnp.float32)
            elif name == DIAGONAL_PARAM:
                value = jnp.ones(shape, param_dtype)
            else:  # P, Q or a merged kernel
                value = kernel_init(rngs.params(), shape, param_dtype)
            setattr(self, name, nnx.Param(value))
        self.rngs = gate_stream(rngs) if self.spec.gated else None

    def where(self) -> str:
        return f"FactorizedDense({self.in_features} -> {self.out_features})"

    def param_names(self, spec: FactorizedSpec) -> dict[str, tuple[int, ...]]:
        if not isinstance(spec, FactorizedSpec):
            raise ValueError(f"{self.where()}: spec={spec!r} must be a flaxprune.FactorizedSpec.")
        n_in, n_out, r = self.in_features, self.out_features, spec.rank
        out: dict[str, tuple[int, ...]] = {"bias": (n_out,)} if self.use_bias else {}
        if spec.merged:
            out["kernel"] = (n_in, n_out)
        elif r > 0:
            out.update({"P": (n_in, r), "Q": (r, n_out)})
            if spec.diagonal:
                out[DIAGONAL_PARAM] = (r,)
            if spec.gated:
                out[GATE_PARAM] = (r,)
        return out

    def __call__(self, x: jax.Array, deterministic: bool | None = None, *, rngs: KeySource = None) -> jax.Array:
        """``[..., in] -> [..., out]``; ``deterministic`` and ``rngs`` override the layer's for this call."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"{self.where()}: x has shape {x.shape}; its last axis must be {self.in_features}.")
        spec = self.spec
        bias = self.bias[...] if self.use_bias else None
        if spec.merged:
            x, kernel, bias = promote_dtype(x, self.kernel[...], bias, dtype=self.dtype)
            y = jnp.matmul(x, kernel, precision=self.precision)
            return y if bias is None else y + bias
        if spec.rank == 0:
            dtype = self.dtype or jnp.result_type(x, self.param_dtype)
            y = jnp.zeros(x.shape[:-1] + (self.out_features,), dtype)
            return y if bias is None else y + bias.astype(dtype)
        z = None
        if spec.gated:
            z = self.gates(x, self.is_deterministic(deterministic), rngs)
        diag = self.diag[...] if spec.diagonal else None
        return factorized_apply(
            x, self.P[...], self.Q[...], bias, diag=diag, z=z, dtype=self.dtype, precision=self.precision
        )

    def gates(self, x: jax.Array, deterministic: bool, rngs: KeySource = None) -> jax.Array:
        """Gate values broadcastable against ``[..., rank]`` for inputs ``x``."""
        log_alpha = self.log_alpha[...]
        if self.per_example_gates and not deterministic and x.ndim > 1:
            z = self.gate_mask(log_alpha, deterministic, rngs, (x.shape[0],))  # [batch, rank]
            return z.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + log_alpha.shape)
        return self.gate_mask(log_alpha, deterministic, rngs)
