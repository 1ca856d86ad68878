"""Dense layers whose kernel entries carry hard-concrete gates: per weight (L0) or per block.

The FLOP paper's unstructured and block-structured baselines (Wang,
Wohlwend & Lei 2020, Sec. 4): the same hard-concrete gates and the same
Lagrangian control as FLOP, on other units of a dense ``kernel: [in, out]``:

* :class:`WeightGatedDense`: one gate per weight (Louizos et al. 2018's
  L0 regularisation), ``log_alpha_weight: [in, out]``; a gate costs 1 weight.
* :class:`BlockGatedDense`: one gate per ``b_in x b_out`` block,
  ``log_alpha_block: [in / b_in, out / b_out]``; a gate costs
  ``b_in * b_out`` weights. A block shape that does not divide the kernel
  is refused, naming the layer and the dimension.

``y = x @ (kernel * z) + bias``. The eval mask is FLOP's
(:func:`~flaxprune.gates.deterministic_mask`) over all of a layer's gates at
once. Surgery folds the mask into the kernel and drops the gates: what is
left is a *masked dense* layer, ``kernel`` with exact zeros where the gates
were shut (``MaskedDenseSpec(gated=False)``): as many weights as before in
memory and time (``experiments/compare.py`` times its projections in
``jax.experimental.sparse`` BCOO form too).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GateConfig, deterministic_mask, gate_values, log_alpha_init
from flaxprune.layers.factorized import check_features, is_size
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

__all__ = [
    "BLOCK_GATE_PARAM",
    "BLOCK_GATED_LAYOUT",
    "WEIGHT_GATE_PARAM",
    "WEIGHT_GATED_LAYOUT",
    "BlockGatedDense",
    "MaskedDenseSpec",
    "WeightGatedDense",
    "check_block",
    "expand_blocks",
    "flat",
    "flat_mask",
]

WEIGHT_GATE_PARAM = "log_alpha_weight"  # [in, out]: a gate per weight
BLOCK_GATE_PARAM = "log_alpha_block"  # [in / b_in, out / b_out]: a gate per block


@dataclasses.dataclass(frozen=True)
class MaskedDenseSpec:
    """Structure of a ``WeightGatedDense`` / ``BlockGatedDense`` after surgery.

    Attributes:
      gated: whether the kernel still carries its gates (False: a masked
        dense kernel, zeros where the gates were shut).
    """

    gated: bool = False


def check_block(where: str, block: Any, shape: tuple[int, int]) -> tuple[int, int]:
    """``block`` as a pair of ints that divide ``shape = (in, out)``; else one line naming what fails."""
    ok = isinstance(block, (tuple, list)) and len(block) == 2 and all(is_size(b) for b in block)
    if not ok:
        raise ValueError(f"{where}: block={block!r} must be two ints >= 1 (rows, columns of a block), e.g. (16, 16).")
    for axis, (b, n) in enumerate(zip(block, shape)):
        if n % b:
            dim = ("in", "out")[axis]
            raise ValueError(
                f"{where}: block {tuple(block)} does not divide the kernel [{shape[0]}, {shape[1]}]: "
                f"{dim}={n} is not a multiple of {b} ({n} % {b} = {n % b}). Pick a block shape whose sides divide "
                "every pruned matrix (e.g. set the model's sizes to multiples of the block)."
            )
    return int(block[0]), int(block[1])


def flat_mask(log_alpha: jax.Array, gate: GateConfig) -> jax.Array:
    """FLOP's eval mask over all of a layer's gates at once (any shape), in ``log_alpha``'s shape."""
    return deterministic_mask(log_alpha.reshape(-1), gate).reshape(log_alpha.shape)


def flat(x: Any) -> Any:
    """``x`` as a vector; a ``jax.ShapeDtypeStruct`` (shapes only, as ``jax.eval_shape`` gives) stays one."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((size(x),), x.dtype)
    return jnp.reshape(x, (-1,))


def expand_blocks(z: jax.Array, block: tuple[int, int]) -> jax.Array:
    """``[n_in, n_out]`` block values as the ``[n_in * b_in, n_out * b_out]`` mask of every weight."""
    return jnp.repeat(jnp.repeat(z, block[0], axis=0), block[1], axis=1)


class _GatedKernel(nn.Module):
    """Shared body: a kernel, an optional bias, and gates of ``gate_shape(in)`` expanded onto the kernel."""

    features: int
    use_bias: bool = True
    gated: bool = True
    plan: Plan = Plan()
    deterministic: bool | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    gate_param = ""  # set by the subclasses

    def gate_shape(self, n_in: int) -> tuple[int, int]:
        raise NotImplementedError

    def expand(self, z: jax.Array) -> jax.Array:
        return z

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        where = f"{type(self).__name__} at '{'/'.join(self.path)}'"
        check_features(where, self.features)
        spec = self.plan.spec(self.path)
        if spec is None:
            spec = MaskedDenseSpec(gated=self.gated)
        elif not isinstance(spec, MaskedDenseSpec):
            raise ValueError(f"{where}: the plan holds {spec!r}, expected a MaskedDenseSpec.")
        n_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (n_in, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        if spec.gated:
            deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
            gate = self.plan.gate
            log_alpha = self.param(
                self.gate_param, log_alpha_init(gate.drop_rate, gate.init_std), self.gate_shape(n_in), jnp.float32
            )
            z = flat_mask(log_alpha, gate) if deterministic else gate_values(self, log_alpha, gate, False)
            kernel = kernel * self.expand(z).astype(kernel.dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.matmul(x, kernel, precision=self.precision)
        return y if bias is None else y + bias


class WeightGatedDense(_GatedKernel):
    """``y = x @ (kernel * z) + bias`` with a hard-concrete gate on every weight (unstructured L0).

    Params: ``kernel: [in, out]``, ``bias: [out]`` and, when gated,
    ``log_alpha_weight: [in, out]``. Attributes as ``nn.Dense``'s, plus
    ``gated``, ``plan`` (gate settings; a ``MaskedDenseSpec`` under the
    module's path overrides ``gated``) and ``deterministic``.
    """

    gate_param = WEIGHT_GATE_PARAM

    def gate_shape(self, n_in: int) -> tuple[int, int]:
        return (n_in, self.features)


class BlockGatedDense(_GatedKernel):
    """``y = x @ (kernel * z) + bias`` with a hard-concrete gate on every ``block`` of the kernel.

    Params: ``kernel: [in, out]``, ``bias: [out]`` and, when gated,
    ``log_alpha_block: [in / block[0], out / block[1]]``.

    Attributes:
      block: ``(rows, columns)`` of a block; both must divide the kernel's
        sides (else a one-line error naming the layer and the side).
    """

    block: tuple[int, int] = (16, 16)
    gate_param = BLOCK_GATE_PARAM

    def gate_shape(self, n_in: int) -> tuple[int, int]:
        where = f"BlockGatedDense at '{'/'.join(self.path)}'"
        b_in, b_out = check_block(where, self.block, (n_in, self.features))
        return (n_in // b_in, self.features // b_out)

    def expand(self, z: jax.Array) -> jax.Array:
        return expand_blocks(z, tuple(self.block))


# --- layouts -------------------------------------------------------------------


def _layout(kind: str, gate_param: str) -> Layout:
    reserved = (
        f"flaxprune reserves '{gate_param}' for {'WeightGatedDense' if kind == 'weight_gated' else 'BlockGatedDense'}"
        f", whose node holds exactly kernel: [in, out] and {gate_param}: "
        f"{'[in, out]' if kind == 'weight_gated' else '[in / b_in, out / b_out]'}, and optionally bias: [out]."
    )

    def block_of(node: Node) -> tuple[int, int]:
        (n_in, n_out), (g_in, g_out) = shape_of(node["kernel"]), shape_of(node[gate_param])
        return n_in // g_in, n_out // g_out

    def match(node: Node) -> bool:
        return holds(node, gate_param)

    def malformed(node: Node) -> str | None:
        if not holds(node, "kernel"):
            return f"'{gate_param}' without 'kernel'"
        problem = (
            not_2d(node, "kernel") or not_2d(node, gate_param) or unknown_keys(node, ("kernel", "bias", gate_param))
        )
        if problem:
            return problem
        (n_in, n_out), (g_in, g_out) = shape_of(node["kernel"]), shape_of(node[gate_param])
        if kind == "weight_gated":
            problem = wrong_shape(node, gate_param, (n_in, n_out))
        elif g_in < 1 or g_out < 1 or n_in % g_in or n_out % g_out:
            problem = f"{gate_param} {(g_in, g_out)} does not tile the kernel {(n_in, n_out)} in whole blocks"
        return problem or wrong_shape(node, "bias", (n_out,))

    def groups(node: Node) -> list[GateGroup]:
        b_in, b_out = block_of(node)
        return [GateGroup(gate_param, flat(node[gate_param]), int(b_in * b_out))]

    def kept_weights(node: Node, gate: GateConfig) -> jax.Array:
        b_in, b_out = block_of(node)
        return jnp.count_nonzero(flat_mask(node[gate_param], gate)) * (b_in * b_out)

    def rows(path: str, node: Node, gate: GateConfig) -> list[LayerRow]:
        n_in, n_out = shape_of(node["kernel"])
        b_in, b_out = block_of(node)
        kept = int(np.count_nonzero(np.asarray(flat_mask(node[gate_param], gate))))
        weights = kept * b_in * b_out
        return [
            LayerRow(
                path=path,
                kind=kind,
                shape=(n_in, n_out),
                rank=kept,
                full_rank=size(node[gate_param]),
                params=weights + size(node.get("bias", ())),  # non-zero weights; a masked kernel stores all
                flops_per_token=2 * weights,  # what a sparse kernel would do; a masked dense one does 2 in out
                gated=True,
            )
        ]

    def shrink(path: str, node: Node, gate: GateConfig) -> tuple[dict, MaskedDenseSpec]:
        mask = to_numpy(expand_blocks(flat_mask(node[gate_param], gate), block_of(node)))
        kernel = to_numpy(node["kernel"]) * mask  # the soft mask folded in, exact zeros where the gates shut
        out = {"kernel": jnp.asarray(kernel, np.asarray(node["kernel"]).dtype)}
        if "bias" in node:
            out["bias"] = node["bias"]
        return out, MaskedDenseSpec(gated=False)

    def check(path: str, node: Node, spec: Any) -> None:
        if not isinstance(spec, MaskedDenseSpec):
            raise mismatch(path, "the layer kind", f"{kind} (kernel, {gate_param})", type(spec).__name__)
        if not spec.gated:
            raise mismatch(path, "gated", True, False)

    return Layout(
        kind=kind,
        reserved=reserved,
        match=match,
        malformed=malformed,
        groups=groups,
        rows=rows,
        shrink=shrink,
        check=check,
        dense_params=lambda node: size(node["kernel"]),
        kept_weights=kept_weights,
    )


WEIGHT_GATED_LAYOUT = _layout("weight_gated", WEIGHT_GATE_PARAM)
BLOCK_GATED_LAYOUT = _layout("block_gated", BLOCK_GATE_PARAM)
