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

import numpy as np

from flaxprune.gates import GATE_PARAM, GateConfig
from flaxprune.layers.factorized import FactorizedSpec
from flaxprune.layers.input_gated import InputGatedSpec
from flaxprune.layers.layout import Layout, LayerRow, Node, mismatch, size

__all__ = ["DENSE_LAYOUT"]


def _dense_match(node: Node) -> bool:
    return "kernel" in node and GATE_PARAM not in node and np.ndim(node["kernel"]) == 2


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
    else:
        raise mismatch(path, "the layer kind", "dense (kernel)", type(spec).__name__)


DENSE_LAYOUT = Layout("dense", _dense_match, lambda node: [], _dense_rows, _dense_shrink, _dense_check)
