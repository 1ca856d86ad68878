"""A multiplier update that reaches any sparsity target with one setting: PI control in log space.

FLOP (Wang et al., 2020) climbs the Lagrangian's multipliers with Adam: the
multiplier ``lambda_1`` moves by about the rate per step, so it grows
linearly while the model is short of its target. But the force a multiplier
puts on an open gate is ``lambda_1 * d s_hat / d log_alpha``, which vanishes
as ``sigmoid'(log_alpha + 2.4)``: the ``|lambda_1|`` a task needs spans
orders of magnitude (units on a small toy, tens on BERT fine-tuning), so a
rate fast enough for one task overshoots on another and is too slow for a
third. And integral action alone (what ascent is) overshoots a moving target:
it only begins to let go once the sparsity has passed the target.

Here the multiplier is the output of a proportional-integral controller
(Stooke et al., 2020, "Responsive Safety in Reinforcement Learning by PID
Lagrangian Methods"; the nuPI of Sohrabi et al., 2024) acting on the
*logarithm* of its size, so a fixed gain moves it by a fixed fraction per
step whatever its scale:

    e_k    = t_k - s_k                                   (the shortfall; -d loss / d lambda_1)
    I_k    = clip(I_{k-1} + g_k * e_k, -max_log, max_log)     (g_k: integral_gain, or unwind_gain
                                                            once e_k has turned against I_{k-1}, and
                                                            then stopping at 0)
    xi_k   = smoothing * xi_{k-1} + (1 - smoothing) * e_k
    u_k    = I_k + clip(proportional_gain * xi_k, -proportional_limit, proportional_limit)
    lambda_1 = -scale * sinh(u_k)

``sinh`` is 0 at 0 (the multipliers start at zero, as FLOP's do), odd (a
model sparser than its target gets a positive ``lambda_1`` that lets gates
reopen, with the same strength law) and exponential beyond ``|u| ~ 1``. The
expected sparsity ``s`` is a deterministic function of the gates (no
sampling noise), so the gains can be high; the proportional term reacts to
the error before the integral has wound up, and lets go as soon as the
sparsity passes the target, which is what keeps the ramp from overshooting.
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
        sparsity error: at 8, a shortfall of 0.01 grows ``|lambda_1|`` by 8%
        per step once it is past ``scale``.
      proportional_gain: log-units of immediate response per unit of
        (smoothed) error: at 30, being 0.01 past the target cuts
        ``|lambda_1|`` by a quarter at once.
      smoothing: exponential-average factor of the error seen by the
        proportional term, in [0, 1) (0: the raw error).
      scale: the multiplier's size at ``|u| ~ 1``, where the law turns from
        linear to exponential (> 0).
      proportional_limit: bound on the proportional term's size (> 0), so
        a large error (a target set without a ramp) cannot make the
        multiplier explode in one step.
      max_log: bound on the integral ``|I|`` (anti-windup), > 0:
        ``|lambda_1| <= scale * sinh(max_log + proportional_limit)``.
    """

    integral_gain: float = 0.3
    unwind_gain: float = 3.0
    proportional_gain: float = 30.0
    smoothing: float = 0.5
    scale: float = 1.0
    proportional_limit: float = 3.0
    max_log: float = 8.0

    def __post_init__(self):
        for name in ("integral_gain", "unwind_gain", "proportional_gain"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise ValueError(f"SparsityController: {name}={value!r} must be a finite number >= 0.")
        if not (_finite(self.smoothing) and 0 <= self.smoothing < 1):
            raise ValueError(f"SparsityController: smoothing={self.smoothing!r} must be a number in [0, 1).")
        for name in ("scale", "proportional_limit", "max_log"):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise ValueError(f"SparsityController: {name}={value!r} must be a finite number > 0.")


class SparsityControllerState(NamedTuple):
    """State of :func:`sparsity_controller`: the integral and the smoothed error (float32 scalars)."""

    integral: jax.Array
    smoothed_error: jax.Array


def control_output(integral: jax.Array, smoothed_error: jax.Array, settings: SparsityController) -> jax.Array:
    """``lambda_1 = -scale * sinh(integral + clip(proportional_gain * smoothed_error, +-proportional_limit))``."""
    limit = settings.proportional_limit
    proportional = jnp.clip(settings.proportional_gain * smoothed_error, -limit, limit)
    return -settings.scale * jnp.sinh(integral + proportional)


def next_integral(integral: jax.Array, error: jax.Array, settings: SparsityController) -> jax.Array:
    """The integral after one step.

    While the error agrees with the integral's sign (or the integral is 0) it moves by
    ``integral_gain * e``; once the error has turned against it (the target was passed) it unwinds by
    ``unwind_gain * e`` but stops at 0: past the target the gates that closed stay closed at any small
    multiplier, so holding the integral there would keep pushing, and crossing 0 at the unwinding rate
    would push the other way just as long. Then clipped to ``+-max_log``.
    """
    against = integral * error < 0
    moved = integral + jnp.where(against, settings.unwind_gain, settings.integral_gain) * error
    moved = jnp.where(against & (moved * integral < 0), 0.0, moved)
    return jnp.clip(moved, -settings.max_log, settings.max_log)


def sparsity_controller(settings: SparsityController | None = None) -> optax.GradientTransformation:
    """The multipliers' update: PI control of ``lambda_1`` on the sparsity error, ``lambda_2`` held.

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
        return SparsityControllerState(integral=zero, smoothed_error=zero)

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
        new_1 = control_output(integral, smoothed, settings)
        step = {"lambda_1": (new_1 - lambda_1).astype(jnp.result_type(lambda_1)), "lambda_2": -lambda_2}
        out = _replace_multipliers(updates, step)
        return out, SparsityControllerState(integral=integral, smoothed_error=smoothed)

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
