"""``InputGatedDense``: a dense layer with a hard-concrete gate on each input feature.

FLOP's ``HardConcreteLinear`` (used on the first SRU layer of its enwik8
model): ``y = (x * z) @ W + b``. A zero gate removes row ``k`` of ``W``, so
each gate costs ``out`` weights. After surgery the layer gathers the kept
input features (static indices held in the plan) and multiplies by the kept
rows, with the soft mask folded in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GATE_PARAM, GateConfig, deterministic_mask, gate_values, log_alpha_init
from flaxprune.layers.factorized import check_features
from flaxprune.layers.layout import (
    GateGroup,
    Layout,
    LayerRow,
    Node,
    holds,
    mismatch,
    not_2d,
    shape_of,
    size,
    to_numpy,
    unknown_keys,
    wrong_shape,
)
from flaxprune.plan import Plan

__all__ = ["INPUT_GATED_LAYOUT", "InputGatedDense", "InputGatedSpec", "compose_keep", "input_gated_apply"]


@dataclasses.dataclass(frozen=True)
class InputGatedSpec:
    """Structure of one ``InputGatedDense`` after surgery.

    Attributes:
      keep: sorted indices of the input features kept (None: all of them);
        an empty tuple makes the layer bias-only.
      gated: whether the inputs carry gates.
    """

    keep: tuple[int, ...] | None = None
    gated: bool = False

    def __post_init__(self):
        if self.keep is not None:
            keep = tuple(int(i) for i in self.keep)
            if list(keep) != sorted(set(keep)) or (keep and keep[0] < 0):
                raise ValueError(f"InputGatedSpec: keep={self.keep!r} must be sorted, unique, non-negative indices.")
            object.__setattr__(self, "keep", keep)


def input_gated_apply(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    z: jax.Array | None = None,
    dtype: Any = None,
    precision: Any = None,
) -> jax.Array:
    """``(x * z) @ kernel + bias``: the forward pass of every input-gated layer (Linen and NNX).

    Args:
      x: ``[..., n_in]`` inputs (already the kept features).
      kernel: ``[n_in, out]``.
      bias: ``[out]`` or None.
      z: gate values broadcastable against ``x``, or None.
      dtype: computation dtype (None: the inputs' promoted dtype, as ``nn.Dense``).
      precision: of the matmul.

    Returns:
      ``[..., out]``.
    """
    if z is not None:
        x = x * z.astype(x.dtype)  # gated in the input's dtype, before the promotion
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
    y = jnp.matmul(x, kernel, precision=precision)
    return y if bias is None else y + bias


class InputGatedDense(nn.Module):
    """``y = (x * z) @ kernel + bias`` with one hard-concrete gate per input feature.

    Params: ``kernel: [in, out]``, ``bias: [out]`` and, when gated,
    ``log_alpha: [in]``.

    Attributes:
      features: output size.
      use_bias: add a bias.
      gated: gate the inputs (False: a plain ``nn.Dense``).
      per_example_gates: a gate sample per example instead of one per call.
      plan: pruning plan; a spec under this module's path overrides the
        defaults (kept inputs, gated).
      deterministic: default gate mode when not given per call.
    """

    features: int
    use_bias: bool = True
    gated: bool = True
    per_example_gates: bool = False
    plan: Plan = Plan()
    deterministic: bool | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        check_features(f"InputGatedDense at '{'/'.join(self.path)}'", self.features)
        spec = self.plan.spec(self.path)
        if spec is None:
            spec = InputGatedSpec(keep=None, gated=self.gated)
        elif not isinstance(spec, InputGatedSpec):
            raise ValueError(
                f"InputGatedDense at '{'/'.join(self.path)}': the plan holds {spec!r}, expected an InputGatedSpec."
            )
        if spec.keep is not None:
            if spec.keep and spec.keep[-1] >= x.shape[-1]:
                raise ValueError(
                    f"InputGatedDense at '{'/'.join(self.path)}': the plan keeps input {spec.keep[-1]} but the "
                    f"input has {x.shape[-1]} features."
                )
            x = jnp.take(x, jnp.asarray(spec.keep, jnp.int32), axis=-1)
        n_in = x.shape[-1]
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        if n_in == 0:
            dtype = self.dtype or jnp.result_type(x, self.param_dtype)
            y = jnp.zeros(x.shape[:-1] + (self.features,), dtype)
            return y if bias is None else y + bias.astype(dtype)
        kernel = self.param("kernel", self.kernel_init, (n_in, self.features), self.param_dtype)
        z = None
        if spec.gated:
            deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
            log_alpha = self.param(
                GATE_PARAM, log_alpha_init(self.plan.gate.drop_rate, self.plan.gate.init_std), (n_in,), jnp.float32
            )
            if self.per_example_gates and not deterministic and x.ndim > 1:
                z = gate_values(self, log_alpha, self.plan.gate, deterministic, (x.shape[0],))
                z = z.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (n_in,))
            else:
                z = gate_values(self, log_alpha, self.plan.gate, deterministic)
        return input_gated_apply(x, kernel, bias, z=z, dtype=self.dtype, precision=self.precision)


# --- layouts -------------------------------------------------------------------


RESERVED = (
    "flaxprune reserves 'kernel' beside 'log_alpha' for InputGatedDense, whose node holds exactly "
    "kernel: [in, out] and log_alpha: [in], and optionally bias: [out]."
)


def _ig_match(node: Node) -> bool:
    return holds(node, "kernel") and holds(node, GATE_PARAM)


def _ig_malformed(node: Node) -> str | None:
    problem = not_2d(node, "kernel") or unknown_keys(node, ("kernel", "bias", GATE_PARAM))
    if problem:
        return problem
    n_in, n_out = shape_of(node["kernel"])
    return wrong_shape(node, GATE_PARAM, (n_in,)) or wrong_shape(node, "bias", (n_out,))


def _ig_groups(node: Node) -> list[GateGroup]:
    return [GateGroup(GATE_PARAM, node[GATE_PARAM], int(node["kernel"].shape[1]))]


def _ig_rows(path: str, node: Node, gate: GateConfig) -> list[LayerRow]:
    n_in, n_out = node["kernel"].shape
    kept = int(np.count_nonzero(np.asarray(deterministic_mask(node[GATE_PARAM], gate))))
    return [
        LayerRow(
            path=path,
            kind="input_gated",
            shape=(int(n_in), int(n_out)),
            rank=kept,
            full_rank=int(n_in),
            params=kept * int(n_out) + size(node.get("bias", ())),
            flops_per_token=2 * kept * int(n_out),
            gated=True,
        )
    ]


def _ig_kept_weights(node: Node, gate: GateConfig) -> jax.Array:
    return jnp.count_nonzero(deterministic_mask(node[GATE_PARAM], gate)) * node["kernel"].shape[1]


def _ig_shrink(path: str, node: Node, gate: GateConfig) -> tuple[dict | None, InputGatedSpec]:
    mask = to_numpy(deterministic_mask(node[GATE_PARAM], gate))
    keep = np.flatnonzero(mask)
    out = {} if "bias" not in node else {"bias": node["bias"]}
    if keep.size:
        kernel = to_numpy(node["kernel"])[keep] * mask[keep][:, None]  # fold the soft mask into the rows
        out["kernel"] = jnp.asarray(kernel, np.asarray(node["kernel"]).dtype)
    return (out or None), InputGatedSpec(keep=tuple(int(i) for i in keep))


def _ig_check(path: str, node: Node, spec: Any) -> None:
    if not isinstance(spec, InputGatedSpec):
        raise mismatch(path, "the layer kind", "input-gated (kernel, log_alpha)", type(spec).__name__)
    if not spec.gated:
        raise mismatch(path, "gated", True, False)
    n_in = node["kernel"].shape[0]
    if spec.keep is not None and len(spec.keep) != n_in:
        raise mismatch(path, "the kernel's input size", n_in, len(spec.keep))


def compose_keep(before: Any, after: InputGatedSpec) -> InputGatedSpec:
    """``after`` with its kept indices mapped to the layer's original inputs.

    ``after.keep`` indexes the rows the node holds now; when the plan already
    kept a subset (``before``, from an earlier compaction), those rows are
    ``before.keep``'s inputs, and the plan must name the original ones.
    """
    if not isinstance(before, InputGatedSpec) or before.keep is None or after.keep is None:
        return after
    return dataclasses.replace(after, keep=tuple(before.keep[i] for i in after.keep))


def _ig_compact(path: str, node: Node, keep: np.ndarray, spec: Any) -> tuple[dict[str, int], InputGatedSpec]:
    kept = InputGatedSpec(keep=tuple(int(i) for i in keep), gated=True)
    return {"kernel": 0, GATE_PARAM: 0}, compose_keep(spec, kept)


INPUT_GATED_LAYOUT = Layout(
    kind="input_gated",
    reserved=RESERVED,
    match=_ig_match,
    malformed=_ig_malformed,
    groups=_ig_groups,
    rows=_ig_rows,
    shrink=_ig_shrink,
    check=_ig_check,
    compact=_ig_compact,
    kept_weights=_ig_kept_weights,
)
