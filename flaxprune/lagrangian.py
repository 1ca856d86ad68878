"""Sparsity control by an augmented Lagrangian, and FLOP's optimizer.

Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models"
(EMNLP 2020, arXiv 1910.04732), Sec. 3: instead of a fixed L0 coefficient,
FLOP reaches a target sparsity ``t`` by solving the min-max problem

    max_{lambda_1, lambda_2}  min_{theta, alpha}
        E[L(theta, alpha)] + lambda_1 (s_hat - t) + lambda_2 (s_hat - t)^2

where ``s_hat`` is the expected sparsity (one minus the expected number of
kept parameters over the prunable total, from the closed-form ``P(z != 0)``
of :mod:`flaxprune.gates`). The model weights and the gate parameters
``log_alpha`` descend this objective; the two multipliers ascend it. FLOP
also ramps ``t`` linearly from 0 over a warmup, and trains the weights with
the inverse-square-root ("Noam") learning-rate schedule.

The pieces here are pure functions and optax factories:

* :func:`penalty` -- the Lagrangian term above;
* :func:`init_multipliers` -- ``{'lambda_1': 0, 'lambda_2': 0}``;
* :func:`target_schedule`, :func:`noam_schedule` -- optax schedules;
* :func:`gradient_ascent` -- turns any optax optimizer into a maximiser;
* :func:`param_labels`, :func:`flop_optimizer` -- one ``optax.partition``
  over the trainable pytree ``{'params': <flax params>, 'lagrangian':
  init_multipliers()}`` with a transform per group (weights, gates,
  multipliers), so one ``tx.update`` steps all three and the multipliers'
  state lives in the optimizer state like everything else.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flaxprune.gates import is_gate_param
from flaxprune.sparsity_control import SparsityController, sparsity_controller
from flaxprune.tree_paths import dict_keys

__all__ = [
    "GradientAscentState",
    "flop_optimizer",
    "gradient_ascent",
    "init_multipliers",
    "noam_schedule",
    "param_labels",
    "penalty",
    "ramp_progress",
    "target_schedule",
]

LAGRANGIAN_KEY = "lagrangian"  # top-level key of the multipliers in the trainable pytree
_MULTIPLIER_NAMES = ("lambda_1", "lambda_2")

ScalarOrSchedule = float | optax.Schedule


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_finite(x: Any) -> bool:
    return _is_real(x) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def penalty(expected_sparsity: jax.Array, target: jax.Array, lambdas: Mapping[str, jax.Array]) -> jax.Array:
    """The augmented-Lagrangian term ``l1 * (s - t) + l2 * (s - t) ** 2``.

    Add it to the task loss and differentiate the sum with respect to the
    whole trainable pytree: the gradient with respect to ``log_alpha`` pushes
    the expected sparsity towards the target, and the gradient with respect
    to the multipliers is what :func:`gradient_ascent` climbs.

    Args:
      expected_sparsity: scalar ``s`` in [0, 1], differentiable in the gates.
      target: scalar target sparsity ``t`` (e.g. ``target_schedule(...)(step)``).
      lambdas: mapping with scalar entries ``'lambda_1'`` and ``'lambda_2'``,
        e.g. ``trainable['lagrangian']``.

    Returns:
      A scalar.

    Raises:
      ValueError: if ``lambdas`` lacks ``'lambda_1'`` or ``'lambda_2'``.
    """
    missing = [k for k in _MULTIPLIER_NAMES if k not in lambdas]
    if missing:
        raise ValueError(
            f"penalty: lambdas={dict(lambdas)!r} is missing {missing}; it must map 'lambda_1' and "
            "'lambda_2' to scalars, as init_multipliers() does."
        )
    gap = expected_sparsity - target
    return lambdas["lambda_1"] * gap + lambdas["lambda_2"] * jnp.square(gap)


def init_multipliers() -> dict[str, jax.Array]:
    """Both Lagrange multipliers at zero, as FLOP starts them.

    Returns:
      ``{'lambda_1': 0.0, 'lambda_2': 0.0}`` as float32 scalars; put it under
      the key ``'lagrangian'`` of the trainable pytree.
    """
    return {name: jnp.zeros((), jnp.float32) for name in _MULTIPLIER_NAMES}


def target_schedule(target: float, warmup_steps: int, start: float = 0.0) -> optax.Schedule:
    """FLOP's target sparsity: a linear ramp from ``start`` to ``target``.

    ``t(step) = start + (target - start) * min(1, step / warmup_steps)``.
    Ramping the target keeps the multipliers from forcing a large sparsity
    jump on a model that has not yet learned which parts it can spare. FLOP
    starts at 0, the sparsity of a model with every gate open on the
    ``'factors'`` basis; on the ``'dense'`` basis a full-rank SVD start sits
    below 0 (:func:`flaxprune.size.open_sparsity`), and starting the ramp
    there keeps the multipliers from building up during the first steps and
    then overshooting the target.

    Args:
      target: final sparsity, in [0, 1) (1 would prune everything).
      warmup_steps: steps over which the target moves from ``start``; 0 means
        the target applies from the first step.
      start: the target at step 0, a finite number < 1.

    Returns:
      A schedule mapping a (possibly traced) step count to a float32 scalar.

    Raises:
      ValueError: if ``target`` is not in [0, 1) or ``warmup_steps`` is not
        an integer >= 0.
    """
    if not (_is_real(target) and 0 <= target < 1):
        raise ValueError(f"target_schedule: target={target!r} must be a number in [0, 1).")
    if not (_is_int(warmup_steps) and warmup_steps >= 0):
        raise ValueError(f"target_schedule: warmup_steps={warmup_steps!r} must be an integer >= 0.")
    if not (_is_finite(start) and start < 1):
        raise ValueError(f"target_schedule: start={start!r} must be a finite number < 1.")
    target, start = float(target), float(start)
    progress = ramp_progress(int(warmup_steps))

    def schedule(step):
        return start + (target - start) * progress(step)

    return schedule


def ramp_progress(warmup_steps: int) -> optax.Schedule:
    """The fraction of the target's ramp done by a step: ``min(1, step / warmup_steps)`` (1 throughout for 0).

    :func:`target_schedule` moves the target by it; a run with
    ``prune.constraint='hard'`` moves the held sparsity from the expected to
    the hard one by it (:func:`flaxprune.straight_through_sparsity`'s ``weight``).

    Raises:
      ValueError: if ``warmup_steps`` is not an integer >= 0.
    """
    if not (_is_int(warmup_steps) and warmup_steps >= 0):
        raise ValueError(f"ramp_progress: warmup_steps={warmup_steps!r} must be an integer >= 0.")
    warmup_steps = int(warmup_steps)

    def progress(step):
        if warmup_steps == 0:
            return jnp.ones((), jnp.float32)
        return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup_steps)

    return progress


def noam_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
    """FLOP's learning rate ``lr * min(k ** -0.5, k * warmup_steps ** -1.5)``, ``k = count + 1``.

    A linear warmup to ``lr / sqrt(warmup_steps)`` at ``k = warmup_steps``,
    then inverse-square-root decay. optax counts updates from 0 while FLOP's
    iteration counter starts at 1, hence the ``+ 1`` (which also avoids
    ``0 ** -0.5``).

    Args:
      learning_rate: the scale ``lr`` (finite, > 0). Note the peak rate is
        ``lr / sqrt(warmup_steps)``, not ``lr``.
      warmup_steps: integer >= 1.

    Returns:
      A schedule mapping a (possibly traced) update count to a float32 scalar.

    Raises:
      ValueError: if ``learning_rate`` is not a finite number > 0 or
        ``warmup_steps`` is not an integer >= 1.
    """
    if not (_is_finite(learning_rate) and learning_rate > 0):
        raise ValueError(f"noam_schedule: learning_rate={learning_rate!r} must be a finite number > 0.")
    if not (_is_int(warmup_steps) and warmup_steps >= 1):
        raise ValueError(f"noam_schedule: warmup_steps={warmup_steps!r} must be an integer >= 1.")
    learning_rate = float(learning_rate)
    slope = float(warmup_steps) ** -1.5

    def schedule(count):
        k = jnp.asarray(count, jnp.float32) + 1.0
        return learning_rate * jnp.minimum(jax.lax.rsqrt(k), k * slope)

    return schedule


class GradientAscentState(NamedTuple):
    """State of :func:`gradient_ascent`."""

    inner_state: optax.OptState  # the wrapped optimizer's state, unchanged in structure


def gradient_ascent(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Wraps ``inner`` so that its updates ascend the objective instead of descending it.

    FLOP maximises the Lagrangian over the multipliers while minimising it
    over everything else. The gradient with respect to ``lambda_1`` is
    ``d loss / d lambda_1 = s_hat - t``: while the model is less sparse than
    the target (``s_hat < t``) ascent drives ``lambda_1`` negative, and a
    negative ``lambda_1`` makes ``lambda_1 * (s_hat - t)`` fall as ``s_hat``
    rises, so the penalty rewards higher sparsity; past the target the sign
    flips back. ``d loss / d lambda_2 = (s_hat - t) ** 2 >= 0``, so
    ``lambda_2`` only grows, stiffening the quadratic term.

    The wrapper feeds ``inner`` the negated gradient, i.e. ``inner`` minimises
    ``-loss``. For sign-symmetric optimizers (SGD, Adam, clipping) this is
    exactly the negation of ``inner``'s updates; for parameter-dependent terms
    such as weight decay it keeps their meaning (decay still pulls towards
    zero) instead of reversing them.

    Args:
      inner: any optax optimizer, e.g. ``optax.adam(1e-2)``. Its rate is
        inside it and cannot be checked here: build it with a finite one
        (:func:`flop_optimizer` checks its ``lambda_learning_rate``).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`GradientAscentState`.

    Raises:
      ValueError: if ``inner`` is not an optax ``GradientTransformation`` (a rate, say).
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise ValueError(
            f"gradient_ascent: inner={inner!r} must be an optax.GradientTransformation, the optimizer to turn "
            "into a maximiser, e.g. gradient_ascent(optax.adam(1e-2))."
        )

    def init_fn(params):
        return GradientAscentState(inner_state=inner.init(params))

    def update_fn(updates, state, params=None):
        neg = jax.tree.map(jnp.negative, updates)
        updates, inner_state = inner.update(neg, state.inner_state, params)
        return updates, GradientAscentState(inner_state=inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def _label(path: tuple[Any, ...], _) -> str:
    keys = dict_keys(path)  # a boxed leaf (nnx.Param) adds attribute keys after its name
    if keys and keys[0] == LAGRANGIAN_KEY:
        return "multipliers"
    if keys and is_gate_param(keys[-1]):
        return "gates"
    return "weights"


def param_labels(tree: Any) -> Any:
    """Labels each leaf of a trainable pytree ``'weights'``, ``'gates'`` or ``'multipliers'``.

    * anywhere under the top-level key ``'lagrangian'``: ``'multipliers'``;
    * a leaf whose own dict key starts with ``'log_alpha'`` (``log_alpha``,
      ``log_alpha_0``, ...): ``'gates'``;
    * everything else: ``'weights'``.

    Args:
      tree: the trainable pytree, ``{'params': ..., 'lagrangian': ...}``, or
        a gradient pytree of the same structure.

    Returns:
      A pytree of the same structure with a string per leaf, as
      ``optax.partition`` expects.
    """
    return jax.tree_util.tree_map_with_path(_label, tree)


def _check_rate(fn: str, name: str, value: Any, allow_schedule: bool) -> None:
    if allow_schedule and callable(value):
        return
    if not (_is_finite(value) and value > 0):
        accepted = "a finite number > 0 or an optax schedule" if allow_schedule else "a finite number > 0"
        raise ValueError(f"{fn}: {name}={value!r} must be {accepted}.")


def _check_trainable(tree: Any) -> None:
    """Raises unless ``tree`` is a trainable pytree ``{'params': ..., 'lagrangian': {'lambda_1', 'lambda_2'}}``.

    Without the multipliers ``optax.partition`` would label nothing ``'multipliers'`` and train on, silently
    without the constraint; other top-level keys (more trainable state) are the caller's affair.
    """
    lambdas = tree.get(LAGRANGIAN_KEY) if isinstance(tree, Mapping) else None
    if (
        not isinstance(tree, Mapping)
        or "params" not in tree
        or not isinstance(lambdas, Mapping)
        or set(lambdas) != set(_MULTIPLIER_NAMES)
    ):
        found = sorted(map(str, tree)) if isinstance(tree, Mapping) else type(tree).__name__
        inner = f", 'lagrangian' holds {sorted(map(str, lambdas))}" if isinstance(lambdas, Mapping) else ""
        raise ValueError(
            f"flop_optimizer: init got a pytree with keys {found}{inner}; the trainable pytree must be "
            "{'params': ..., 'lagrangian': fp.init_multipliers()}: without the multipliers nothing ascends "
            "and the sparsity target is never enforced."
        )


def _decay_mask(params: Any) -> Any:
    # Matrices decay; biases, norms' scales and other vectors do not.
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def flop_optimizer(
    learning_rate: ScalarOrSchedule,
    gate_learning_rate: ScalarOrSchedule,
    lambda_learning_rate: float | None = None,
    *,
    multiplier_control: SparsityController | None = None,
    clip_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    wrap_weights: Callable[[optax.GradientTransformation], optax.GradientTransformation] | None = None,
) -> optax.GradientTransformation:
    """One optimizer for the whole trainable pytree, one transform per group.

    Built with ``optax.partition`` over :func:`param_labels`:

    * ``'weights'``: global-norm clipping to ``clip_norm``, then AdamW with
      ``(learning_rate, b1, b2, eps, weight_decay)``; decay applies only to
      leaves with ``ndim >= 2``.
    * ``'gates'``: plain ``optax.adam(gate_learning_rate)``, no clipping and no
      decay. FLOP's gates need their own, larger rate (e.g. 1e-2) to move
      against the multipliers at all.
    * ``'multipliers'``: by default :func:`flaxprune.sparsity_control.sparsity_controller`, PI control
      of ``log |lambda_1|`` that reaches any target with its default gains
      (``multiplier_control`` sets them); with a ``lambda_learning_rate``,
      FLOP's own ``gradient_ascent(optax.adam(lambda_learning_rate))``, whose
      rate has to suit the task (a faithful reproduction).

    Clipping is computed over the model weights only: a large gradient on
    ``log_alpha`` or on the multipliers does not shrink the weights' step.
    ``b1``, ``b2`` and ``eps`` configure the weights' AdamW only.

    Usage::

      trainable = {'params': params, 'lagrangian': init_multipliers()}
      tx = flop_optimizer(noam_schedule(1.0, 4000), 1e-2)  # multipliers: PI control
      opt_state = tx.init(trainable)
      grads = jax.grad(loss_fn)(trainable, ...)
      updates, opt_state = tx.update(grads, opt_state, trainable)
      trainable = optax.apply_updates(trainable, updates)

    Args:
      learning_rate: weights' rate (finite, > 0) or an optax schedule.
      gate_learning_rate: gates' rate (finite, > 0) or an optax schedule.
      lambda_learning_rate: None (the default): the multipliers follow the
        PI controller; a rate (finite, > 0): FLOP's Adam ascent at that rate.
      multiplier_control: the controller's gains (None: its defaults); only
        without a ``lambda_learning_rate``.
      clip_norm: maximum global norm of the weights' gradient (> 0), or None
        to skip clipping.
      weight_decay: decoupled weight decay (>= 0) of the weight matrices.
      b1: AdamW's first-moment decay, in [0, 1).
      b2: AdamW's second-moment decay, in [0, 1).
      eps: AdamW's denominator epsilon (>= 0).
      wrap_weights: applied to the weights' transform (clipping and AdamW),
        e.g. ``lambda inner: agp_pruning(inner, ...)`` for AGP's magnitude
        masks (:mod:`flaxprune.agp`); it sees the weights alone.

    Returns:
      An ``optax.GradientTransformation``; ``init`` takes the whole trainable
      pytree ``{'params': ..., 'lagrangian': init_multipliers()}`` (and
      refuses any other), ``update`` needs ``params`` (for weight decay and
      the partition's labels).

    Raises:
      ValueError: if a rate is not a finite number > 0 (and not a schedule,
        where one is allowed), both ``lambda_learning_rate`` and
        ``multiplier_control`` are given, ``clip_norm`` is neither None nor finite and
        > 0, ``weight_decay`` or ``eps`` is not finite and >= 0, or ``b1``
        or ``b2`` is outside [0, 1).
    """
    fn = "flop_optimizer"
    _check_rate(fn, "learning_rate", learning_rate, allow_schedule=True)
    _check_rate(fn, "gate_learning_rate", gate_learning_rate, allow_schedule=True)
    if lambda_learning_rate is not None:
        _check_rate(fn, "lambda_learning_rate", lambda_learning_rate, allow_schedule=False)
        if multiplier_control is not None:
            raise ValueError(
                f"{fn}: lambda_learning_rate={lambda_learning_rate!r} (FLOP's Adam ascent) and multiplier_control="
                f"{multiplier_control!r} (the PI controller) both choose the multipliers' update; pass one."
            )
        multipliers = gradient_ascent(optax.adam(lambda_learning_rate))
    else:
        multipliers = sparsity_controller(multiplier_control)  # raises for settings of the wrong type
    if clip_norm is not None and not (_is_finite(clip_norm) and clip_norm > 0):
        raise ValueError(f"{fn}: clip_norm={clip_norm!r} must be None (no clipping) or a finite number > 0.")
    if not (_is_finite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"{fn}: weight_decay={weight_decay!r} must be a finite number >= 0.")
    for name, value in (("b1", b1), ("b2", b2)):
        if not (_is_real(value) and 0 <= value < 1):
            raise ValueError(f"{fn}: {name}={value!r} must be a number in [0, 1).")
    if not (_is_finite(eps) and eps >= 0):
        raise ValueError(f"{fn}: eps={eps!r} must be a finite number >= 0.")

    clip = optax.clip_by_global_norm(clip_norm) if clip_norm is not None else optax.identity()
    weights = optax.chain(
        clip,
        optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask),
    )
    if wrap_weights is not None:
        weights = wrap_weights(weights)
    transforms = {
        "weights": weights,
        "gates": optax.adam(gate_learning_rate),
        "multipliers": multipliers,
    }
    tx = optax.partition(transforms, param_labels)

    def init_fn(tree):
        _check_trainable(tree)
        return tx.init(tree)

    return tx._replace(init=init_fn)
