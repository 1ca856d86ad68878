"""Walking a params tree by module path, through the layer layouts.

A Flax params collection is a nested mapping whose paths are module paths
(``'encoder/layer_0/query'``), the same paths a :class:`~flaxprune.Plan`
keys its specs by. Size accounting, surgery and the spectral gate start all
visit the nodes that some layer layout (:data:`flaxprune.layers.LAYOUTS`)
recognises; these functions are the one walk they share, so a node is
recognised, addressed and rebuilt the same way everywhere.

Layers are recognised by the names of their params (the reserved names that
:mod:`flaxprune.layers` lists), so a node that holds a reserved name must
have exactly the structure of its layer; :func:`layout_of` refuses any other
(a user's own module with a param called ``P`` or ``log_alpha``), naming the
path, rather than count it as a layer or skip it. Every walk here goes through
it, so size accounting, surgery and the spectral start all refuse alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flaxprune.gates import is_gate_param
from flaxprune.layers import LAYOUTS, Layout

__all__ = ["join_path", "layer_nodes", "layout_of", "map_layer_nodes", "node_at"]

Node = Mapping[str, Any]


def join_path(prefix: str, key: Any) -> str:
    """``prefix/key`` (just ``key`` at the root)."""
    return f"{prefix}/{key}" if prefix else str(key)


_BARE_GATES = (
    "flaxprune reserves names starting with 'log_alpha' for the gates of its layers, and counts or cuts a gate "
    "only beside the weights it controls (a bare HardConcreteGate's gates control none: leave them out of the "
    "params passed here)."
)


def layout_of(node: Any, path: str = "") -> Layout | None:
    """The layout that recognises ``node`` (a dict of one module's params), or None for no layer.

    Args:
      node: a subtree of a params tree.
      path: its module path, for the error.

    Raises:
      ValueError: if ``node`` holds a name a layer reserves without that
        layer's exact structure, or gate params with no layer weights.
    """
    if not isinstance(node, Mapping):
        return None
    layout = next((layout for layout in LAYOUTS if layout.match(node)), None)
    if layout is not None:
        problem, reserved = layout.malformed(node), layout.reserved
    else:
        gates = sorted(str(k) for k, v in node.items() if is_gate_param(k) and not isinstance(v, Mapping))
        problem, reserved = (f"gate params {gates} with no layer weights" if gates else None), _BARE_GATES
    if problem is not None:
        raise ValueError(
            f"params at '{path or '<root>'}': {problem}. {reserved} A module of your own must not use these "
            "names: rename its params."
        )
    return layout


def _check_params(params: Any, fn: str) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(f"{fn}: params must be a nested mapping (a Flax params dict), got {type(params).__name__}.")


def layer_nodes(params: Mapping[str, Any]) -> Iterator[tuple[str, Node, Layout]]:
    """Yields ``(path, node, layout)`` for every node a layout recognises, in sorted path order.

    A recognised node is not searched further (its arrays are one layer's).

    Raises:
      ValueError: if ``params`` is not a mapping, or a node misuses a
        reserved name (see :func:`layout_of`).
    """

    def walk(node, prefix):
        layout = layout_of(node, prefix)
        if layout is not None:
            yield prefix, node, layout
            return
        for key in sorted(node):
            if isinstance(node[key], Mapping):
                yield from walk(node[key], join_path(prefix, key))

    _check_params(params, "layer_nodes")
    yield from walk(params, "")


def map_layer_nodes(fn: Callable[[str, Node, Layout], Node | None], params: Mapping[str, Any]) -> dict[str, Any]:
    """A new params tree with every recognised node replaced by ``fn(path, node, layout)``.

    ``fn`` returns the new node, or None to remove it (a layer reduced to
    nothing). Everything else keeps its place and its key order; the input
    is not modified. Returning ``node`` itself leaves a layer as it is.

    Raises:
      ValueError: if ``params`` is not a mapping, or a node misuses a
        reserved name (see :func:`layout_of`).
    """

    def walk(node, prefix):
        layout = layout_of(node, prefix)
        if layout is not None:
            return fn(prefix, node, layout)
        out = {}
        for key, child in node.items():
            new = walk(child, join_path(prefix, key)) if isinstance(child, Mapping) else child
            if new is not None:
                out[key] = new
        return out

    _check_params(params, "map_layer_nodes")
    return walk(params, "") or {}


def node_at(params: Mapping[str, Any], path: str) -> Any | None:
    """The subtree at ``path`` (``'a/b/c'``; ``''`` is the root), or None where there is none."""
    node: Any = params
    for key in path.split("/") if path else ():
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node
