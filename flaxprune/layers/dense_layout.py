"""The layout of a plain dense kernel: no gates, but reported and checked against a plan.

A model may keep some layers dense (an output head, an ungated projection),
and surgery leaves a factorized layer as a dense ``kernel`` when its kept
factors would be no smaller (``FactorizedSpec(merged=True)``), or an
input-gated one as a kernel of the kept rows. This layout lets size
accounting report those nodes and lets ``shrink`` check that a dense node
agrees with the spec a plan holds for it. It matches last among the layouts
(:data:`flaxprune.layers.LAYOUTS`): every gated kind has a kernel or factors
*and* a gate vector.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GATE_PARAM, GateConfig
from flaxprune.layers.factorized import FactorizedSpec
from flaxprune.layers.gated_kernel import MaskedDenseSpec
from flaxprune.layers.input_gated import InputGatedSpec
from flaxprune.layers.layout import Layout, LayerRow, Node, holds, mismatch, shape_of, size, unknown_keys, wrong_shape

__all__ = ["DENSE_LAYOUT"]


RESERVED = (
    "flaxprune reserves a 2-D 'kernel' for a dense layer (nn.Dense, or what shrink leaves of a factorized or "
    "input-gated one), whose node holds exactly kernel: [in, out] and optionally bias: [out]."
)


def _dense_match(node: Node) -> bool:
    # A kernel of another rank (nn.Conv's, DenseGeneral's) is no layer flaxprune knows, and no claim.
    return holds(node, "kernel") and not holds(node, GATE_PARAM) and np.ndim(node["kernel"]) == 2


def _dense_malformed(node: Node) -> str | None:
    return unknown_keys(node, ("kernel", "bias")) or wrong_shape(node, "bias", (shape_of(node["kernel"])[1],))


def _dense_rows(path: str, node: Node, gate: GateConfig) -> list[LayerRow]:
    n_in, n_out = node["kernel"].shape
    return [
        LayerRow(
            path=path,
            kind="dense",
            shape=(int(n_in), int(n_out)),
            rank=int(min(n_in, n_out)),
            full_rank=int(min(n_in, n_out)),
            params=int(n_in * n_out) + size(node.get("bias", ())),
            flops_per_token=2 * int(n_in * n_out),
            gated=False,
        )
    ]


def _dense_shrink(path: str, node: Node, gate: GateConfig):
    raise AssertionError("a dense node has no gates to shrink")


def _dense_check(path: str, node: Node, spec: Any) -> None:
    if isinstance(spec, FactorizedSpec):
        if not spec.merged:
            raise mismatch(path, "the params", "a dense kernel", f"factors of rank {spec.rank}")
    elif isinstance(spec, InputGatedSpec):
        if spec.gated:
            raise mismatch(path, "gated", False, True)
        n_in = node["kernel"].shape[0]
        if spec.keep is not None and len(spec.keep) != n_in:
            raise mismatch(path, "the kernel's input size", n_in, len(spec.keep))
    elif isinstance(spec, MaskedDenseSpec):
        if spec.gated:
            raise mismatch(path, "gated", False, True)
    else:
        raise mismatch(path, "the layer kind", "dense (kernel)", type(spec).__name__)


def _dense_kept_weights(node: Node, gate: GateConfig) -> Any:
    # A magnitude-pruned (AGP) or masked-dense export holds its pruned weights as exact zeros.
    return jnp.count_nonzero(node["kernel"])


DENSE_LAYOUT = Layout(
    kind="dense",
    reserved=RESERVED,
    match=_dense_match,
    malformed=_dense_malformed,
    groups=lambda node: [],
    rows=_dense_rows,
    shrink=_dense_shrink,
    check=_dense_check,
    kept_weights=_dense_kept_weights,
)
