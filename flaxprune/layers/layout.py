"""How a gated layer's params declare what they cost and how they shrink.

Size accounting and surgery work on the params pytree alone. Each layer kind
registers a :class:`Layout` that recognises its node in the params tree (the
dict of one module's params) by the names in it, and knows, as pure
functions of that node:

* ``match``: whether the node claims the kind, by holding one of the names
  the kind reserves (``reserved`` says which, in words);
* ``malformed``: what in a claimed node departs from the kind's exact
  structure (a missing partner, a shape that disagrees, an unknown key), or
  None. Recognising layers by name is what lets accounting run on the params
  alone, so a node that uses a reserved name without the structure behind it
  (a user's own module with a param called ``P``) is refused, never guessed
  at: :func:`flaxprune.param_tree.layout_of` raises, naming the path;
* ``groups``: its gate vectors and the number of weights each gate controls
  (the cost per gate), which is all that size accounting needs;
* ``row``: one line of the per-layer report;
* ``shrink``: the reduced node and the spec the module needs to build it;
* ``check``: that a node agrees with the spec a plan holds for it;
* ``dense_params`` (optional): the weights of the plain dense layer the
  node stands for, when that differs from what its gates control (a
  factorized ``in x out`` matrix at full rank holds ``r (in + out)`` weights
  in ``P`` and ``Q`` but stands for ``in * out``); it is the basis of the
  ``'dense'`` sparsity (:mod:`flaxprune.size`);
* ``compact`` (optional): for the sorted indices ``keep`` of the gates that
  stay and the node's current spec (or None), the axis along which each of
  the node's params is cut (``{'P': 1, 'Q': 0, 'log_alpha': 0}``) and the
  spec of the still-gated smaller layer (:mod:`flaxprune.compaction`);
* ``kept_weights`` (optional): the weights of the dense ``in x out``
  matrix the node stands for that it still holds, as a (jit-compatible)
  count: non-zero entries of a masked kernel, ``min(k (in + out), in *
  out)`` for ``k`` kept components. It is the one sparsity all pruning
  methods share (:mod:`flaxprune.dense_reference`);
* ``cuts`` (optional): whether ``shrink`` has something to cut in a node
  that holds no gates (a factorized layer's learned diagonal with zeros);
  without it, only gated nodes are cut.

The registry is ``flaxprune.layers.LAYOUTS``; a node is handled by the first
layout that matches it. Only leaves count as held names: a submodule called
``P`` is a module, not a factor.
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
      kind: ``'factorized'``, ``'dense'``, ``'input_gated'``, ``'bias_only'``,
        ``'adaptive[i]'`` for cluster ``i``, or ``'other'`` for the one row
        (path ``'(other params)'``) of every param outside a layer node
        (norms, plain embeddings, a tied softmax's biases, ...).
      shape: ``(in, out)`` of the linear map the layer computes.
      rank: components (or inputs / embedding dims) kept: counted with the
        deterministic mask for a gated layer, the actual size otherwise.
      full_rank: components present in the params.
      params: parameters the layer holds once pruned (bias included; gates
        excluded, since surgery drops them).
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
    reserved: str  # the names the kind reserves and the structure they stand for, for errors
    match: Callable[[Node], bool]
    malformed: Callable[[Node], str | None]
    groups: Callable[[Node], list[GateGroup]]
    rows: Callable[[str, Node, GateConfig], list[LayerRow]]
    shrink: Callable[[str, Node, GateConfig], tuple[dict | None, Any]]
    check: Callable[[str, Node, Any], None]
    dense_params: Callable[[Node], int] | None = None
    compact: Callable[[str, Node, np.ndarray, Any], tuple[dict[str, int], Any]] | None = None
    kept_weights: Callable[[Node, GateConfig], jax.Array] | None = None
    cuts: Callable[[Node], bool] | None = None


def holds(node: Node, key: str) -> bool:
    """Whether ``node`` holds a param (a leaf, not a submodule) named ``key``."""
    return key in node and not isinstance(node[key], Mapping)


def shape_of(x) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))


def unknown_keys(node: Node, allowed) -> str | None:
    """``'unknown keys [...]'`` for the keys of ``node`` outside ``allowed``, or None."""
    extra = sorted(str(k) for k in node if k not in allowed)
    return f"unknown keys {extra}" if extra else None


def wrong_shape(node: Node, key: str, expected: tuple[int, ...]) -> str | None:
    """``'<key> has shape ..., expected ...'`` where ``node[key]`` exists with another shape, or None."""
    if key in node and shape_of(node[key]) != expected:
        return f"{key} has shape {shape_of(node[key])}, expected {expected}"
    return None


def not_2d(node: Node, key: str) -> str | None:
    """``'<key> has shape ..., not 2-D'`` where ``node[key]`` is not a matrix, or None."""
    if len(shape_of(node[key])) != 2:
        return f"{key} has shape {shape_of(node[key])}, not 2-D"
    return None


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


def check_finite_gates(fn: str, path: str, groups: list[GateGroup]) -> None:
    """Raises where a gate vector holds NaN or inf: no mask, and so no count or cut, can be read from it.

    Reads the values on the host, so it runs outside ``jit`` only.
    """
    for g in groups:
        values = np.asarray(jax.device_get(g.log_alpha))
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            where = f"{path}/{g.name}" if path else g.name
            raise ValueError(
                f"{fn}: '{where}' holds non-finite values ({bad} of {values.size}), so its eval mask says nothing "
                "about which components to keep: the training that produced these params diverged. Use an earlier "
                "checkpoint whose gates are finite."
            )
