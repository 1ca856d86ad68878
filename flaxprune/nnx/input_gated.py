"""NNX ``InputGatedDense``: ``y = (x * z) @ W + b`` with one hard-concrete gate per input feature.

The NNX twin of :class:`flaxprune.InputGatedDense` (FLOP's
``HardConcreteLinear``). Params: ``kernel: [in, out]``, ``bias: [out]`` and,
when gated, ``log_alpha: [in]``, the Linen layer's names. After surgery its
:class:`~flaxprune.InputGatedSpec` holds the kept input features (static
indices): the layer still takes all ``in_features`` inputs, gathers the kept
ones and multiplies by the kept rows.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from flaxprune.gates import DEFAULT_GATE, GATE_PARAM, GateConfig, log_alpha_init
from flaxprune.layers.input_gated import InputGatedSpec, input_gated_apply
from flaxprune.nnx.base import GatedLayer, KeySource, check_gate, check_rngs, check_size, gate_stream

__all__ = ["InputGatedDense"]


class InputGatedDense(GatedLayer):
    """``y = (x * z) @ kernel + bias`` with one hard-concrete gate per input feature.

    Args:
      in_features: input size (all of it, also after surgery kept a subset).
      out_features: output size.
      use_bias: add a bias.
      gated: gate the inputs (False: a plain dense layer).
      per_example_gates: a gate sample per example instead of one per call.
      spec: the structure to build (an :class:`~flaxprune.InputGatedSpec`:
        the kept inputs and whether they are gated); overrides ``gated``.
      gate: hard-concrete settings.
      deterministic: default mode: evaluation mask (True) or gate samples (False).
      dtype, param_dtype, precision, kernel_init, bias_init: as in the Linen layer.
      rngs: ``params`` initialises the weights; the layer keeps a fork of ``gates``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        gated: bool = True,
        per_example_gates: bool = False,
        spec: InputGatedSpec | None = None,
        gate: GateConfig = DEFAULT_GATE,
        deterministic: bool | None = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Any = nn.initializers.lecun_normal(),
        bias_init: Any = nn.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        where = f"InputGatedDense({in_features!r} -> {out_features!r})"
        self.in_features = check_size(where, "in_features", in_features, " (the layer's input size)")
        self.out_features = check_size(where, "out_features", out_features, " (the layer's output size)")
        rngs = check_rngs(where, rngs)
        self.gate = check_gate(where, gate)
        if spec is None:
            spec = InputGatedSpec(keep=None, gated=bool(gated))
        self.use_bias = bool(use_bias)
        self.per_example_gates = bool(per_example_gates)
        self.deterministic = deterministic
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        for name, shape in self.param_names(spec).items():
            if name == "bias":
                value = bias_init(rngs.params(), shape, param_dtype)
            elif name == GATE_PARAM:
                value = log_alpha_init(gate.drop_rate, gate.init_std)(rngs.params(), shape, jnp.float32)
            else:
                value = kernel_init(rngs.params(), shape, param_dtype)
            setattr(self, name, nnx.Param(value))
        self.spec = spec
        self.rngs = gate_stream(rngs) if spec.gated else None

    def where(self) -> str:
        return f"InputGatedDense({self.in_features} -> {self.out_features})"

    def param_names(self, spec: InputGatedSpec) -> dict[str, tuple[int, ...]]:
        if not isinstance(spec, InputGatedSpec):
            raise ValueError(f"{self.where()}: spec={spec!r} must be a flaxprune.InputGatedSpec or None.")
        if spec.keep is not None and spec.keep and spec.keep[-1] >= self.in_features:
            raise ValueError(
                f"{self.where()}: spec keeps input {spec.keep[-1]}, but in_features={self.in_features}."
            )
        n_in = self.in_features if spec.keep is None else len(spec.keep)
        out: dict[str, tuple[int, ...]] = {"bias": (self.out_features,)} if self.use_bias else {}
        if n_in:
            out["kernel"] = (n_in, self.out_features)
            if spec.gated:
                out[GATE_PARAM] = (n_in,)
        return out

    def __call__(self, x: jax.Array, deterministic: bool | None = None, *, rngs: KeySource = None) -> jax.Array:
        """``[..., in] -> [..., out]``; ``deterministic`` and ``rngs`` override the layer's for this call."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"{self.where()}: x has shape {x.shape}; its last axis must be {self.in_features}.")
        spec = self.spec
        if spec.keep is not None:
            x = jnp.take(x, jnp.asarray(spec.keep, jnp.int32), axis=-1)
        bias = self.bias[...] if self.use_bias else None
        if x.shape[-1] == 0:
            dtype = self.dtype or jnp.result_type(x, self.param_dtype)
            y = jnp.zeros(x.shape[:-1] + (self.out_features,), dtype)
            return y if bias is None else y + bias.astype(dtype)
        z = None
        if spec.gated:
            deterministic = self.is_deterministic(deterministic)
            log_alpha = self.log_alpha[...]
            if self.per_example_gates and not deterministic and x.ndim > 1:
                z = self.gate_mask(log_alpha, deterministic, rngs, (x.shape[0],))
                z = z.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + log_alpha.shape)
            else:
                z = self.gate_mask(log_alpha, deterministic, rngs)
        return input_gated_apply(x, self.kernel[...], bias, z=z, dtype=self.dtype, precision=self.precision)
