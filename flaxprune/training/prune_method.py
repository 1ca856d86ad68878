"""What ``config.prune.method`` changes in a run: the optimizer, the sparsity it is measured by, its target.

The gated methods (``flop``, ``l0``, ``l0_block``) train the Lagrangian
toward ``prune.target`` on the sparsity basis of ``prune.basis``. The AGP
methods (``agp``, ``agp_structured``) have no gates: the weights' optimizer
is wrapped in :func:`flaxprune.agp.agp_pruning` (masks in the optimizer
state), whose cubic schedule runs from ``prune.agp_start`` to
``prune.target_warmup`` (the same end as the gated methods' ramp) every
``prune.agp_frequency`` steps, and their sparsity is the dense reference's
(:mod:`flaxprune.dense_reference`), read from the weights' zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from flaxprune.agp import agp_pruning, agp_sparsity, l1_subgradient
from flaxprune.dense_reference import reference_params, reference_sparsity
from flaxprune.layers.factorized import DIAGONAL_PARAM
from flaxprune.methods import AGP_METHODS, GATED_METHODS

__all__ = [
    "agp_target_fn",
    "agp_wrapper",
    "method_of",
    "prunable_shapes",
    "uses_agp",
    "uses_lagrangian",
]


def method_of(config: Any) -> str:
    """``config.prune.method`` (``'flop'`` where a config predates the field)."""
    return str(config.prune.get("method", "flop"))


def uses_lagrangian(config: Any) -> bool:
    """Whether the run trains gates under the Lagrangian (a pruned run of a gated method)."""
    return bool(config.prune.enabled) and method_of(config) in GATED_METHODS


def uses_agp(config: Any) -> bool:
    """Whether the run prunes by AGP's magnitude masks."""
    return bool(config.prune.enabled) and method_of(config) in AGP_METHODS


def prunable_shapes(model_config: Any) -> dict[str, tuple[int, int]] | None:
    """``{path: (in, out)}`` of the dense reference's pruned matrices, for a model that declares them (the SRU)."""
    return getattr(model_config, "prunable_shapes", None)


def _module_path(path: tuple[Any, ...]) -> tuple[str, str]:
    """``(module path, leaf name)`` of a key path in the trainable tree (``('params', ..., name)``)."""
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if keys and keys[0] == "params":
        keys = keys[1:]
    return "/".join(keys[:-1]), (keys[-1] if keys else "")


def agp_wrapper(config: Any, model_config: Any) -> Callable[[optax.GradientTransformation], Any] | None:
    """The transformation the weights' optimizer is wrapped in for an AGP run, or None.

    ``agp`` masks the ``kernel`` of every pruned matrix, ``agp_structured``
    the ``diag`` between its factors (with ``prune.agp_l1`` times the sign
    of ``diag`` added to its gradient when > 0).
    """
    if not uses_agp(config):
        return None
    shapes = prunable_shapes(model_config) or {}
    leaf = "kernel" if method_of(config) == "agp" else DIAGONAL_PARAM
    p = config.prune

    def prunable(path: tuple[Any, ...], x: jax.Array) -> bool:
        module, name = _module_path(path)
        return name == leaf and module in shapes

    def wrap(inner: optax.GradientTransformation) -> optax.GradientTransformation:
        pruned = agp_pruning(
            inner,
            final_sparsity=float(p.target),
            start_step=int(p.get("agp_start", 0)),
            end_step=int(p.target_warmup),
            frequency=int(p.get("agp_frequency", 100)),
            prunable=prunable,
        )
        l1 = float(p.get("agp_l1", 0.0))
        return optax.chain(l1_subgradient(l1, prunable), pruned) if l1 > 0 else pruned

    return wrap


def agp_target_fn(config: Any) -> Callable[[Any], jax.Array]:
    """AGP's scheduled sparsity by step (what the masks are pruned to)."""
    p = config.prune
    start, end = int(p.get("agp_start", 0)), int(p.target_warmup)
    return lambda step: agp_sparsity(step, initial=0.0, final=float(p.target), start=start, end=end)


def reference_measure(model_config: Any) -> tuple[Callable[[Any], jax.Array], int] | None:
    """``(params -> dense-reference sparsity, the reference's weight count)``, for a model with prunable shapes."""
    shapes = prunable_shapes(model_config)
    if not shapes:
        return None
    return (lambda params: reference_sparsity(params, model_config, shapes)), reference_params(shapes)
