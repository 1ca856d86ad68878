"""AGP: gradual magnitude pruning (Zhu & Gupta 2017) as an optax transformation.

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
for model compression" (2017): every ``frequency`` steps from ``start_step``
to ``end_step`` the smallest-magnitude weights of each prunable matrix are
masked, to the sparsity of the cubic schedule

    s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / span) ** 3,   t0 <= t <= t0 + span,

``s_i`` before ``t0`` and ``s_f`` after. It is FLOP's unstructured baseline
(Wang, Wohlwend & Lei 2020, Sec. 4).

:func:`agp_pruning` wraps the model's own optimizer. Its state holds the
masks (one array per prunable weight, same shape and dtype; a scalar one
for every other leaf), so they checkpoint, resume and shard with the rest of
the optimizer state. A masked weight stays exactly zero through every
update: the gradient is masked before the inner optimizer sees it (so its
moments of a masked weight stay what they were when it was masked, zeroed
then), and the update sets a masked weight to zero (``-w`` when it was
masked this step).

Pure functions: :func:`agp_sparsity` (the schedule), :func:`magnitude_mask`
(one matrix's mask at a sparsity), :func:`default_prunable` (2-D
``kernel`` leaves), :func:`mask_sparsity` (the fraction of prunable weights
masked).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "AGPState",
    "agp_pruning",
    "agp_sparsity",
    "default_prunable",
    "l1_subgradient",
    "magnitude_mask",
    "mask_sparsity",
]

Prunable = Callable[[tuple[Any, ...], jax.Array], bool]


def agp_sparsity(step: jax.Array | int, *, initial: float, final: float, start: int, end: int) -> jax.Array:
    """The cubic schedule ``s(t)`` at ``step`` (float32): ``initial`` up to ``start``, ``final`` from ``end``."""
    span = max(end - start, 1)
    progress = jnp.clip((jnp.asarray(step, jnp.float32) - start) / span, 0.0, 1.0)
    return jnp.float32(final) + (jnp.float32(initial) - jnp.float32(final)) * (1.0 - progress) ** 3


def magnitude_mask(weight: jax.Array, sparsity: jax.Array | float) -> jax.Array:
    """``weight``'s mask (its dtype, 1 kept, 0 pruned) with its ``floor(sparsity * size)`` smallest ``|w|`` pruned.

    Exactly that many are pruned: ties are broken by position (the earlier
    one goes first), so the count does not depend on repeated values.
    """
    flat = jnp.abs(weight).reshape(-1)
    pruned = jnp.floor(jnp.asarray(sparsity, jnp.float32) * flat.size).astype(jnp.int32)
    rank = jnp.empty_like(flat, dtype=jnp.int32).at[jnp.argsort(flat, stable=True)].set(
        jnp.arange(flat.size, dtype=jnp.int32)
    )
    return (rank >= pruned).astype(weight.dtype).reshape(weight.shape)


def default_prunable(path: tuple[Any, ...], leaf: jax.Array) -> bool:
    """The dense weight matrices: 2-D leaves named ``kernel`` (Flax ``Dense``), embeddings and biases excluded."""
    last = path[-1] if path else None
    return getattr(last, "key", None) == "kernel" and getattr(leaf, "ndim", 0) == 2


class AGPState(NamedTuple):
    """``count``: updates so far; ``masks``: like the params (a scalar 1 for an unpruned leaf); ``inner``."""

    count: jax.Array
    masks: Any
    inner: Any


def mask_sparsity(masks: Any, params: Any, prunable: Prunable = default_prunable) -> jax.Array:
    """The fraction of prunable weights that ``masks`` prune (0 when nothing is prunable)."""
    pruned, total = [], 0
    for (path, leaf), mask in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(masks)):
        if prunable(path, leaf):
            pruned.append(jnp.sum(1.0 - mask.astype(jnp.float32)))
            total += leaf.size
    return (sum(pruned) / total) if total else jnp.float32(0.0)


def _check(name: str, value: Any, ok: bool, accepted: str) -> None:
    if not ok:
        raise ValueError(f"agp_pruning: {name}={value!r} is not accepted; accepted: {accepted}.")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def agp_pruning(
    inner: optax.GradientTransformation,
    *,
    final_sparsity: float,
    start_step: int,
    end_step: int,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    prunable: Prunable = default_prunable,
) -> optax.GradientTransformation:
    """``inner`` with AGP's masks: weights pruned by magnitude on the cubic schedule, kept at zero.

    At every update whose step (the count before it) is ``start_step + k *
    frequency <= end_step``, and at ``end_step`` itself (so the last masks
    are at ``final_sparsity`` even when the span is not a multiple of
    ``frequency``), each prunable weight's mask is recomputed from the
    magnitude of the weight the update would give, at the schedule's
    sparsity (masks only grow: a pruned weight is zero, the smallest
    magnitude, so it stays pruned). Between those steps the masks hold.

    Args:
      inner: the model's optimizer (e.g. AdamW); it sees the masked gradients.
      final_sparsity: ``s_f`` in ``[0, 1)``.
      start_step, end_step: ``t0`` and ``t0 + span``, ``0 <= start_step <= end_step``.
      frequency: steps between mask updates, ``>= 1``.
      initial_sparsity: ``s_i`` in ``[0, final_sparsity]``.
      prunable: ``(path, leaf) -> bool``: which leaves carry masks.

    Raises:
      ValueError: one line naming the argument, the value and what is accepted.
    """
    _check("final_sparsity", final_sparsity, isinstance(final_sparsity, numbers.Real)
           and math.isfinite(final_sparsity) and 0.0 <= final_sparsity < 1.0, "a sparsity in [0, 1)")
    _check("initial_sparsity", initial_sparsity, isinstance(initial_sparsity, numbers.Real)
           and 0.0 <= initial_sparsity <= final_sparsity, f"a sparsity in [0, final_sparsity={final_sparsity}]")
    _check("start_step", start_step, _is_int(start_step) and start_step >= 0, "an integer >= 0")
    _check("end_step", end_step, _is_int(end_step) and end_step >= start_step,
           f"an integer >= start_step={start_step} (the schedule's end is not before its start)")
    _check("frequency", frequency, _is_int(frequency) and frequency >= 1, "an integer >= 1")

    def masks_like(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: jnp.ones_like(leaf) if prunable(path, leaf) else jnp.ones((), leaf.dtype), params
        )

    def init(params):
        return AGPState(count=jnp.zeros((), jnp.int32), masks=masks_like(params), inner=inner.init(params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("agp_pruning: update needs params (the magnitudes); call tx.update(grads, state, params).")
        grads = jax.tree.map(lambda g, m: g * m, updates, state.masks)
        inner_updates, inner_state = inner.update(grads, state.inner, params)
        step = state.count
        # On the grid start + k * frequency, and at the end itself: the last masks are at the final sparsity.
        due = (step >= start_step) & (step <= end_step) & (((step - start_step) % frequency == 0) | (step == end_step))
        sparsity = agp_sparsity(step, initial=initial_sparsity, final=final_sparsity, start=start_step, end=end_step)

        def recompute(_):
            return jax.tree_util.tree_map_with_path(
                lambda path, p, u, m: magnitude_mask(p + u, sparsity) * m if prunable(path, p) else m,
                params, inner_updates, state.masks,
            )

        masks = jax.lax.cond(due, recompute, lambda _: state.masks, None)
        # A masked weight ends the update at zero: its update is -w (0 once it is zero).
        new_updates = jax.tree.map(lambda u, p, m: jnp.where(m > 0, u, -p).astype(u.dtype), inner_updates, params,
                                   masks)
        inner_state = _mask_mirrors(inner_state, masks, params)
        return new_updates, AGPState(count=optax.safe_increment(step), masks=masks, inner=inner_state)

    return optax.GradientTransformation(init, update)


def l1_subgradient(strength: float, prunable: Prunable = default_prunable) -> optax.GradientTransformation:
    """Adds ``strength * sign(w)`` to the gradient of every prunable leaf: an L1 penalty's subgradient.

    The structured AGP baseline's optional L1 on the diagonal between the
    factors (pulls entries toward zero before the magnitude masks cut them).
    """
    _check("strength", strength, isinstance(strength, numbers.Real) and math.isfinite(strength) and strength >= 0,
           "a finite number >= 0")

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("l1_subgradient: update needs params (their signs).")
        return jax.tree_util.tree_map_with_path(
            lambda path, g, p: g + strength * jnp.sign(p).astype(g.dtype) if prunable(path, p) else g,
            updates, params,
        ), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _mask_mirrors(inner_state: Any, masks: Any, params: Any) -> Any:
    """Every subtree of ``inner_state`` shaped like ``params`` (Adam's moments, ...) times ``masks``."""
    treedef = jax.tree.structure(params)
    shapes = [leaf.shape for leaf in jax.tree.leaves(params)]

    def is_mirror(node: Any) -> bool:
        try:
            return jax.tree.structure(node) == treedef and [x.shape for x in jax.tree.leaves(node)] == shapes
        except (AttributeError, TypeError):
            return False

    def mask(node: Any) -> Any:
        return jax.tree.map(lambda x, m: x * m.astype(x.dtype), node, masks) if is_mirror(node) else node

    return jax.tree.map(mask, inner_state, is_leaf=is_mirror)
