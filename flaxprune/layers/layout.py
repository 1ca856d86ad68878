"""How a gated layer's params declare what they cost and how they shrink.

Size accounting and surgery work on the params pytree alone. Each layer kind
registers a :class:`Layout` that recognises its node in the params tree (the
dict of one module's params) by the names in it, and knows, as pure
functions of that node:

* ``groups``: its gate vectors and the number of weights each gate controls
  (the cost per gate), which is all that size accounting needs;
* ``row``: one line of the per-layer report;
* ``shrink``: the reduced node and the spec the module needs to build it;
* ``check``: that a node agrees with the spec a plan holds for it;
* ``dense_params`` (optional): the weights of the plain dense layer the
  node stands for, when that differs from what its gates control (a
  factorized ``in x out`` matrix at full rank holds ``r (in + out)`` weights
  in ``P`` and ``Q`` but stands for ``in * out``); it is the basis of the
  ``'dense'`` sparsity (:mod:`flaxprune.size`).

The registry is ``flaxprune.layers.LAYOUTS``; a node is handled by the first
layout that matches it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from flaxprune.gates import GateConfig

Node = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class GateGroup:
    """One gate vector and what each of its gates controls.

    Attributes:
      name: key of the ``log_alpha`` array in the node.
      log_alpha: ``[n]`` gate parameters.
      cost_per_gate: number of weights removed when one gate is zero.
    """

    name: str
    log_alpha: jax.Array
    cost_per_gate: int


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One line of the per-layer report.

    Attributes:
      path: module path, ``'/'``-joined.
      kind: ``'factorized'``, ``'dense'``, ``'input_gated'``, ``'bias_only'``
        or ``'adaptive[i]'`` for cluster ``i``.
      shape: ``(in, out)`` of the linear map the layer computes.
      rank: components (or inputs / embedding dims) kept: counted with the
        deterministic mask for a gated layer, the actual size otherwise.
      full_rank: components present in the params.
      params: parameters the layer holds once pruned (bias included).
      flops_per_token: multiply-adds x 2 per token (row) of input.
      gated: whether the node still carries gates.
    """

    path: str
    kind: str
    shape: tuple[int, int]
    rank: int
    full_rank: int
    params: int
    flops_per_token: int
    gated: bool


class Layout(NamedTuple):
    """Pure functions describing one kind of (possibly gated) layer node."""

    kind: str
    match: Callable[[Node], bool]
    groups: Callable[[Node], list[GateGroup]]
    rows: Callable[[str, Node, GateConfig], list[LayerRow]]
    shrink: Callable[[str, Node, GateConfig], tuple[dict | None, Any]]
    check: Callable[[str, Node, Any], None]
    dense_params: Callable[[Node], int] | None = None


def to_numpy(x) -> np.ndarray:
    """Host copy in float64 for exact surgery arithmetic."""
    return np.asarray(jax.device_get(x), dtype=np.float64)


def size(x) -> int:
    return int(np.prod(np.shape(x), dtype=np.int64))


def mismatch(path: str, what: str, found: Any, expected: Any) -> ValueError:
    return ValueError(
        f"params do not match the plan at '{path}': {what} is {found}, but the plan's spec expects {expected}. "
        "Pass the params and the config that built them together (the pair shrink returned, or the original pair)."
    )
