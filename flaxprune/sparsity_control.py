"""A multiplier update that reaches any sparsity target with one setting: PI(D) control in log space.

FLOP (Wang et al., 2020) climbs the Lagrangian's multipliers with Adam: the
multiplier ``lambda_1`` moves by about the rate per step, so it grows
linearly while the model is short of its target. But the force a multiplier
puts on an open gate is ``lambda_1 * d s_hat / d log_alpha``, which vanishes
as ``sigmoid'(log_alpha + 2.4)``: the ``|lambda_1|`` a task needs spans
orders of magnitude (units on a small toy, tens on BERT fine-tuning), so a
rate fast enough for one task overshoots on another and is too slow for a
third. And integral action alone (what ascent is) overshoots a moving target:
it only begins to let go once the sparsity has passed the target.

Here the multiplier is the output of a proportional-integral-derivative
controller (Stooke et al., 2020, "Responsive Safety in Reinforcement Learning
by PID Lagrangian Methods"; the nuPI of Sohrabi et al., 2024) acting on the
*logarithm* of its size, so a fixed gain moves it by a fixed fraction per
step whatever its scale:

    e_k    = t_k - s_k                                   (the shortfall; -d loss / d lambda_1)
    I_k    = clip(I_{k-1} + g_k * e_k, -max_log, max_log)     (g_k: integral_gain, or the 100 times
                                                            faster unwind_gain once e_k has turned
                                                            against I_{k-1}, and then stopping at 0)
    xi_k   = smoothing * xi_{k-1} + (1 - smoothing) * e_k
    d_k    = derivative_smoothing * d_{k-1} + (1 - derivative_smoothing) * (e_k - e_{k-1})   (d_1 = 0)
    u_k    = I_k + clip(proportional_gain * xi_k + derivative_gain * d_k, -proportional_limit, proportional_limit)
    lambda_1 = -scale * sinh(u_k)

``sinh`` is 0 at 0 (the multipliers start at zero, as FLOP's do), odd (a
model sparser than its target gets a positive ``lambda_1`` that lets gates
reopen, with the same strength law) and exponential beyond ``|u| ~ 1``. The
expected sparsity ``s`` is a deterministic function of the gates (no
sampling noise), so the gains can be high; the proportional term reacts to
the error before the integral has wound up, and lets go as soon as the
sparsity passes the target.

The derivative term (off by default) is for a fast ramp, as in short
fine-tuning. Open gates feel almost no pull (the vanishing ``sigmoid'``), so
the sparsity stays flat while the integral winds up; then the gates, moved by
Adam at their full rate whatever the pull, close together and the sparsity
rushes at the target. The error's fall (``e_k - e_{k-1} < 0``) cuts the
multiplier before the crossing, not after it. Measured on
experiments/multiplier_toy.py's toy across loss scales 0.03-300 and targets
0.3-0.9: with the ramp over half of 460 steps the largest overshoot after the
ramp is 0.130 with PI control and 0.016 with ``derivative_gain=1000``; but at
the toy's 1500 steps (ramp 500) the derivative term's bursts (gates
reopening one by one move the error in steps) raise it from 0.014 to 0.036,
so it is not the default.
``lambda_2`` (the quadratic term's multiplier) stays at 0: the controller
needs no stiffening term.

The transform reads the error from the gradient it is given
(``d loss / d lambda_1 = s - t``) and returns ``new - old`` as the update, so
it drops into :func:`flaxprune.lagrangian.flop_optimizer` in place of
``gradient_ascent(optax.adam(rate))``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from flaxprune.tree_paths import leaf_name

__all__ = ["SparsityController", "SparsityControllerState", "control_output", "sparsity_controller"]


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class SparsityController:
    """Settings of :func:`sparsity_controller`; the defaults serve every task (no per-task tuning).

    Attributes:
      integral_gain: log-units the integral moves per step per unit of
        sparsity error while it winds up: at 0.3, a shortfall of 0.01 grows
        ``|lambda_1|`` by 0.3% per step once it is past ``scale`` (slow: the
        proportional term follows the ramp, the integral holds the rest).
      unwind_gain: the same once the error has turned against the integral
        (the target was passed), down to 0 (:func:`next_integral`): at 30, a
        sparsity 0.01 past the target cuts ``|lambda_1|`` by 26% per step.
      proportional_gain: log-units of immediate response per unit of
        (smoothed) error: at 30, being 0.01 past the target cuts
        ``|lambda_1|`` by a quarter at once.
      smoothing: exponential-average factor of the error seen by the
        proportional term, in [0, 1) (0: the raw error).
      derivative_gain: log-units of response per unit of (smoothed) change
        of the error per step: at 1000, a sparsity closing on its target
        0.003 per step faster than the target moves cuts ``u`` by 3, the
        proportional limit, at once (0, the default: PI control).
      derivative_smoothing: exponential-average factor of the error's
        change, in [0, 1).
      scale: the multiplier's size at ``|u| ~ 1``, where the law turns from
        linear to exponential (> 0).
      proportional_limit: bound on the proportional and derivative terms' summed size (> 0), so
        a large error (a target set without a ramp) cannot make the
        multiplier explode in one step.
      max_log: bound on the integral ``|I|`` (anti-windup), > 0:
        ``|lambda_1| <= scale * sinh(max_log + proportional_limit)``.
    """

    integral_gain: float = 0.3
    unwind_gain: float = 30.0
    proportional_gain: float = 30.0
    smoothing: float = 0.5
    derivative_gain: float = 0.0
    derivative_smoothing: float = 0.8
    scale: float = 1.0
    proportional_limit: float = 3.0
    max_log: float = 8.0

    def __post_init__(self):
        for name in ("integral_gain", "unwind_gain", "proportional_gain", "derivative_gain"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise ValueError(f"SparsityController: {name}={value!r} must be a finite number >= 0.")
        for name in ("smoothing", "derivative_smoothing"):
            value = getattr(self, name)
            if not (_finite(value) and 0 <= value < 1):
                raise ValueError(f"SparsityController: {name}={value!r} must be a number in [0, 1).")
        for name in ("scale", "proportional_limit", "max_log"):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise ValueError(f"SparsityController: {name}={value!r} must be a finite number > 0.")


class SparsityControllerState(NamedTuple):
    """State of :func:`sparsity_controller` (scalars): the integral, the smoothed error, the last error,
    the smoothed change of the error, and the number of updates so far (int32)."""

    integral: jax.Array
    smoothed_error: jax.Array
    last_error: jax.Array
    error_change: jax.Array
    count: jax.Array


def control_output(
    integral: jax.Array, smoothed_error: jax.Array, error_change: jax.Array, settings: SparsityController
) -> jax.Array:
    """``lambda_1 = -scale * sinh(integral + clip(proportional_gain * smoothed_error + derivative_gain *
    error_change, +-proportional_limit))``."""
    limit = settings.proportional_limit
    fast = settings.proportional_gain * smoothed_error + settings.derivative_gain * error_change
    return -settings.scale * jnp.sinh(integral + jnp.clip(fast, -limit, limit))


def next_integral(integral: jax.Array, error: jax.Array, settings: SparsityController) -> jax.Array:
    """The integral after one step.

    While the error agrees with the integral's sign (or the integral is 0) it moves by
    ``integral_gain * e``; once the error has turned against it (the target was passed) it unwinds by
    ``unwind_gain * e`` but stops at 0: past the target the gates that closed stay closed at any small
    multiplier, so holding the integral there would keep pushing, and crossing 0 at the unwinding rate
    would push the other way just as long. Then clipped to ``+-max_log``.

    The unwinding has to be fast because the integral is a logarithm: a ramp that needed
    ``|lambda_1| ~ 30`` left ``I ~ 4``, and at the former default ``unwind_gain=3`` a sparsity 0.01 past
    the target took some 130 steps to let go, while the gates went on closing (MiniLM on MRPC and STS-B
    with distillation: the hard sparsity crossed 0.5 with ``lambda_1`` at -10 and -31 and climbed to
    0.519 and 0.525). At 30 the same error releases it in 14 steps.
    """
    against = integral * error < 0
    moved = integral + jnp.where(against, settings.unwind_gain, settings.integral_gain) * error
    moved = jnp.where(against & (moved * integral < 0), 0.0, moved)
    return jnp.clip(moved, -settings.max_log, settings.max_log)


def sparsity_controller(settings: SparsityController | None = None) -> optax.GradientTransformation:
    """The multipliers' update: PID control of ``lambda_1`` on the sparsity error, ``lambda_2`` held.

    Args:
      settings: the gains (:class:`SparsityController`); None: the defaults.

    Returns:
      An ``optax.GradientTransformation`` over ``{'lambda_1': ..., 'lambda_2': ...}`` (the trainable
      pytree's ``'lagrangian'`` entry, or that pytree with everything else masked, as inside
      ``optax.partition``). ``update(grads, state, params)`` needs ``params`` (the current multipliers:
      the update is ``new - current``) and reads the error from ``grads['lambda_1'] = s - t``.

    Raises:
      ValueError: if ``settings`` is not a :class:`SparsityController`; at ``update``, if ``params`` is
        missing or the pytree holds no ``lambda_1``/``lambda_2``.
    """
    settings = SparsityController() if settings is None else settings
    if not isinstance(settings, SparsityController):
        raise ValueError(
            f"sparsity_controller: settings={settings!r} must be a flaxprune.SparsityController (or None for "
            "the defaults)."
        )

    def init_fn(params):
        del params
        zero = jnp.zeros((), jnp.float32)
        return SparsityControllerState(zero, zero, zero, zero, jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "sparsity_controller: update needs params (the current multipliers), e.g. "
                "tx.update(grads, opt_state, trainable)."
            )
        grad_1, lambda_1, lambda_2 = _multipliers(updates), _multipliers(params), _multipliers(params, "lambda_2")
        error = -jnp.asarray(grad_1, jnp.float32)
        integral = next_integral(state.integral, error, settings)
        smoothed = settings.smoothing * state.smoothed_error + (1.0 - settings.smoothing) * error
        change = jnp.where(state.count > 0, error - state.last_error, 0.0)  # no change seen at the first step
        rho = settings.derivative_smoothing
        error_change = rho * state.error_change + (1.0 - rho) * change
        new_1 = control_output(integral, smoothed, error_change, settings)
        step = {"lambda_1": (new_1 - lambda_1).astype(jnp.result_type(lambda_1)), "lambda_2": -lambda_2}
        out = _replace_multipliers(updates, step)
        return out, SparsityControllerState(integral, smoothed, error, error_change, state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def _find(tree: Any, name: str) -> list[Any]:
    found = []

    def visit(path, leaf):
        if leaf_name(path) == name:
            found.append(leaf)

    jax.tree_util.tree_map_with_path(visit, tree, is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode))
    return [leaf for leaf in found if leaf is not None and not isinstance(leaf, optax.MaskedNode)]


def _multipliers(tree: Any, name: str = "lambda_1") -> jax.Array:
    found = _find(tree, name)
    if len(found) != 1:
        raise ValueError(
            f"sparsity_controller: the pytree holds {len(found)} leaves named {name!r}; it must be the "
            "multipliers {'lambda_1': ..., 'lambda_2': ...} (flaxprune.init_multipliers())."
        )
    return found[0]


def _replace_multipliers(tree: Any, values: dict[str, jax.Array]) -> Any:
    def replace(path, leaf):
        name = leaf_name(path)
        if name in values and not isinstance(leaf, optax.MaskedNode):
            return values[name]
        return leaf

    return jax.tree_util.tree_map_with_path(replace, tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
