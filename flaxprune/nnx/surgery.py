"""``shrink(model) -> model``: FLOP's surgery on an NNX model, through the pure Linen surgery.

The steps: read the model's params and plan (:func:`~flaxprune.nnx.params_of`,
:func:`~flaxprune.nnx.plan_of`); cut them with :func:`flaxprune.shrink`, the
one surgery (it keeps the components whose evaluation mask is non-zero,
folds the soft mask into the weights, merges factors no smaller than the
dense kernel, and returns the new specs); clone the model and give each of
the clone's flaxprune layers its new spec and params
(:meth:`~flaxprune.nnx.base.GatedLayer.restructure`). Everything else in the
model (norms, plain ``nnx.Linear`` heads, dropout, rng streams) is cloned as
it is. The input model is never modified.
"""

from __future__ import annotations

from typing import TypeVar

from flax import nnx

from flaxprune.param_tree import node_at
from flaxprune.nnx.state import layers_of, params_of, plan_of
from flaxprune.surgery import shrink as shrink_params

__all__ = ["shrink"]

M = TypeVar("M", bound=nnx.Module)


def shrink(model: M) -> M:
    """A new, smaller model: every gated component whose evaluation mask is zero cut away.

    In deterministic (eval) mode the new model gives the gated model's
    outputs; its layers are ungated, with smaller dense matrices (or a
    ``kernel`` where the kept factors would be no smaller). ``plan_of`` of
    the result holds the specs that rebuild it.

    Args:
      model: an ``nnx.Module`` holding flaxprune NNX layers.

    Returns:
      A new module of the same type; ``model`` is left as it was.

    Raises:
      ValueError: if ``model`` is no ``nnx.Module``, holds no flaxprune layer,
        its layers disagree on the gate settings, or a gate holds NaN or inf
        (naming its path).
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"shrink: model={type(model).__name__} must be an nnx.Module.")
    plan = plan_of(model)  # raises for no layer, or two gate settings
    small, new_plan = shrink_params(params_of(model, "shrink"), plan)
    out = nnx.clone(model)
    for path, layer in list(layers_of(out)):
        spec = layer.plan_spec()
        if spec is None:  # a tied softmax: it reads the (restructured) embedding per call
            continue
        layer.restructure(new_plan.spec(path), node_at(small, path) or {})
    return out
