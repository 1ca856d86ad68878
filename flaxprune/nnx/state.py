"""An NNX model as flaxprune's pure functions read it: its params tree, its gate settings, its plan.

The NNX layers carry the Linen layers' param names and nesting, so

    params_of(model) == nnx.to_pure_dict(nnx.state(model, nnx.Param))   (keys as strings)

is the tree that :mod:`flaxprune.size` and :func:`flaxprune.shrink` take, and
``plan_of(model)`` is the :class:`~flaxprune.Plan` a Linen model of the same
structure would carry: the gate settings and every layer's spec under its
module path (``'blocks/0/mlp'``: attribute names and list indices, the path
``nnx.iter_modules`` gives). Only ``nnx.Param`` counts: the ``gates`` rng
stream a layer keeps (``RngKey``/``RngCount``), dropout's, batch statistics
and the like are not params.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
from flax import nnx

from flaxprune.gates import GateConfig
from flaxprune.nnx.base import GatedLayer
from flaxprune.plan import Plan, path_key

__all__ = ["gate_of", "layers_of", "params_of", "plan_of"]


def _string_keys(tree: Any) -> Any:
    # nnx.List children have int keys; a plan path and flaxprune's walks spell them as strings.
    if isinstance(tree, Mapping):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def _holds_variables(state: nnx.State) -> bool:
    leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return any(isinstance(leaf, nnx.Variable) for leaf in leaves)


def params_of(source: Any, fn: str = "params_of") -> dict[str, Any]:
    """The params tree of an NNX model, of its state, or a pure dict as it is.

    Args:
      source: an ``nnx.Module``; an ``nnx.State`` (``nnx.state(model)`` or a
        state from ``nnx.split``: only its ``nnx.Param`` leaves are kept); or a
        nested mapping of arrays (``nnx.to_pure_dict(state)``), returned with its
        keys as strings.
      fn: the calling function, for the error.

    Returns:
      A nested dict of arrays keyed by module path (``'layers' -> '0' -> 'P'``).

    Raises:
      ValueError: for anything else.
    """
    if isinstance(source, nnx.Module):
        return _string_keys(nnx.to_pure_dict(nnx.state(source, nnx.Param)))
    if isinstance(source, nnx.State):
        if _holds_variables(source):
            source = nnx.filter_state(source, nnx.Param)
        return _string_keys(nnx.to_pure_dict(source))
    if isinstance(source, Mapping):
        return _string_keys(source)
    raise ValueError(
        f"{fn}: got {type(source).__name__}; pass an nnx.Module, its nnx.State (nnx.state(model, nnx.Param)), "
        "or nnx.to_pure_dict of that state."
    )


def layers_of(model: nnx.Module) -> Iterator[tuple[str, GatedLayer]]:
    """``(path, layer)`` for every flaxprune NNX layer in ``model``, paths as a plan keys them."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, GatedLayer):
            yield path_key(path), module


def _layers_or_raise(model: Any, fn: str) -> list[tuple[str, GatedLayer]]:
    if not isinstance(model, nnx.Module):
        raise ValueError(f"{fn}: model={type(model).__name__} must be an nnx.Module.")
    layers = list(layers_of(model))
    if not layers:
        raise ValueError(
            f"{fn}: the model holds no flaxprune.nnx layer (FactorizedDense, InputGatedDense, AdaptiveEmbedding, "
            "AdaptiveSoftmax); swap them in for nnx.Linear / nnx.Embed."
        )
    return layers


def gate_of(model: nnx.Module, fn: str = "gate_of") -> GateConfig:
    """The one :class:`~flaxprune.GateConfig` of the model's layers.

    Raises:
      ValueError: if ``model`` is no ``nnx.Module``, holds no flaxprune layer,
        or its layers disagree (naming two paths): the eval mask, and so the
        hard count and the cut, must be one rule.
    """
    layers = _layers_or_raise(model, fn)
    first_path, first = layers[0]
    for path, layer in layers[1:]:
        if layer.gate != first.gate:
            raise ValueError(
                f"{fn}: the layers at '{first_path or '<root>'}' and '{path or '<root>'}' have different gate "
                f"settings ({first.gate!r} vs {layer.gate!r}); build every layer with the same gate=."
            )
    return first.gate


def plan_of(model: nnx.Module) -> Plan:
    """The :class:`~flaxprune.Plan` of ``model``: its gate settings and each layer's spec under its path.

    A tied softmax has no entry (its structure is the embedding's), as in Linen.
    With it, ``flaxprune.shrink(params_of(model), plan_of(model))`` is Linen's
    surgery on this model, and ``plan_of(model).spec(path)`` rebuilds a layer
    (``FactorizedDense(..., spec=...)``).
    """
    gate = gate_of(model, "plan_of")
    specs = tuple((path, layer.plan_spec()) for path, layer in layers_of(model) if layer.plan_spec() is not None)
    return Plan(gate=gate, layers=specs)
