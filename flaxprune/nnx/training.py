"""Training an NNX model with FLOP's Lagrangian: the multipliers as params, and ``nnx.Optimizer``.

:func:`flaxprune.flop_optimizer` is one ``optax.partition`` over the trainable
pytree ``{'params': <model params>, 'lagrangian': {'lambda_1', 'lambda_2'}}``
(the Linen loop keeps exactly that in ``TrainState.trainable``): weights and
gates (``log_alpha*``) descend, the two multipliers follow the sparsity error.
For NNX that pytree is a module, :class:`Trainable`: the user's model under
the attribute ``params`` and :class:`Multipliers` (two ``nnx.Param``) under
``lagrangian``, so ``nnx.state(trainable, nnx.Param)`` has that structure and
``nnx.Optimizer(trainable, flop_optimizer(...), wrt=nnx.Param)`` steps all three
groups::

    trainable = fpx.Trainable(model)
    optimizer = nnx.Optimizer(trainable, fpx.flop_optimizer(1e-3, 1e-2), wrt=nnx.Param)
    step = fpx.make_train_step(task_loss, fp.target_schedule(0.5, warmup_steps=400))
    for batch in batches:
        metrics = step(trainable, optimizer, batch)  # nnx.jit; the layers' gates streams advance

:func:`flop_optimizer` is :func:`flaxprune.flop_optimizer` itself: its
partition names a leaf by its last dict key, which an ``nnx.Variable`` box
(the ``.value`` under a param's name) leaves unchanged. The penalty holds
the sparsity surgery delivers by default (``constraint='hard'``,
:func:`flaxprune.straight_through_sparsity`), as a Linen run does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flaxprune import lagrangian
from flaxprune.lagrangian import flop_optimizer
from flaxprune.nnx.size import expected_sparsity, hard_sparsity, straight_through_sparsity
from flaxprune.size import BASES

CONSTRAINTS = ("hard", "expected")  # as config.prune.constraint: what surgery delivers, or FLOP's expected L0

__all__ = ["CONSTRAINTS", "Multipliers", "Trainable", "flop_optimizer", "held_sparsity", "make_train_step", "penalty"]


class Multipliers(nnx.Module):
    """FLOP's Lagrange multipliers ``lambda_1``, ``lambda_2`` as ``nnx.Param`` scalars, zero at the start."""

    def __init__(self):
        for name, value in lagrangian.init_multipliers().items():
            setattr(self, name, nnx.Param(value))

    def as_dict(self) -> dict[str, jax.Array]:
        """``{'lambda_1': ..., 'lambda_2': ...}``, the mapping :func:`flaxprune.penalty` takes."""
        return {"lambda_1": self.lambda_1[...], "lambda_2": self.lambda_2[...]}


class Trainable(nnx.Module):
    """The trainable pytree of :func:`flaxprune.flop_optimizer` as a module: ``params`` and ``lagrangian``.

    Args:
      model: the user's model (any ``nnx.Module`` with flaxprune NNX layers),
        kept by reference: training the ``Trainable`` trains ``model``.
    """

    def __init__(self, model: nnx.Module):
        if not isinstance(model, nnx.Module):
            raise ValueError(f"Trainable: model={type(model).__name__} must be an nnx.Module.")
        self.params = model
        self.lagrangian = Multipliers()


def _check_constraint(fn: str, constraint: str) -> None:
    if constraint not in CONSTRAINTS:
        raise ValueError(
            f"{fn}: constraint={constraint!r} is not a constrained sparsity; accepted: {list(CONSTRAINTS)} "
            "('hard': what shrink delivers; 'expected': FLOP's expected L0 sparsity)."
        )


def held_sparsity(model: nnx.Module, basis: str = "factors", constraint: str = "hard") -> jax.Array:
    """The sparsity the penalty holds: ``straight_through_sparsity`` (``'hard'``) or ``expected_sparsity``."""
    _check_constraint("held_sparsity", constraint)
    if constraint == "hard":
        return straight_through_sparsity(model, basis=basis)
    return expected_sparsity(model, basis=basis)


def penalty(trainable: Trainable, target: Any, basis: str = "factors", constraint: str = "hard") -> jax.Array:
    """``lambda_1 (s - t) + lambda_2 (s - t)^2`` with ``s = held_sparsity(trainable.params, basis, constraint)``.

    Raises:
      ValueError: if ``trainable`` is not a :class:`Trainable`, or for an unknown ``constraint``.
    """
    if not isinstance(trainable, Trainable):
        raise ValueError(
            f"penalty: trainable={type(trainable).__name__} must be a flaxprune.nnx.Trainable (model + multipliers)."
        )
    s = held_sparsity(trainable.params, basis, constraint)
    return lagrangian.penalty(s, target, trainable.lagrangian.as_dict())


def _target_fn(target: Any) -> Callable[[jax.Array], jax.Array]:
    if callable(target):
        return target
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target < 1:
        raise ValueError(
            f"make_train_step: target={target!r} must be a number in [0, 1) or a schedule "
            "(flaxprune.target_schedule(target, warmup_steps))."
        )
    return lambda _: jnp.asarray(target, jnp.float32)


def make_train_step(
    task_loss: Callable[[nnx.Module, Any], jax.Array], target: Any, *, basis: str = "factors", constraint: str = "hard"
) -> Callable[[Trainable, nnx.Optimizer, Any], dict[str, jax.Array]]:
    """A jitted FLOP step: task loss + Lagrangian penalty, one ``optimizer.update``.

    Args:
      task_loss: ``task_loss(model, batch) -> scalar``, the model in training
        mode (its layers draw gate samples from their ``gates`` streams).
      target: target sparsity, a number in [0, 1) or a schedule of the
        optimizer's step count (``flaxprune.target_schedule``).
      basis: the sparsity basis, ``'factors'`` or ``'dense'``.
      constraint: the sparsity the multipliers hold, ``'hard'`` (what
        shrink delivers) or ``'expected'`` (FLOP's); see :func:`held_sparsity`.

    Returns:
      ``step(trainable, optimizer, batch) -> metrics`` (an ``nnx.jit``
      function that updates ``trainable`` and ``optimizer`` in place); the
      metrics are scalars ``loss``, ``task_loss``, ``expected_sparsity``,
      ``hard_sparsity`` (the held one's value with ``'hard'``), ``target``,
      ``lambda_1``, ``lambda_2``.

    Raises:
      ValueError: for a ``task_loss`` that is not callable, a bad ``target``
        or an unknown ``basis``.
    """
    if not callable(task_loss):
        raise ValueError(f"make_train_step: task_loss={task_loss!r} must be a function (model, batch) -> scalar.")
    if basis not in BASES:
        raise ValueError(f"make_train_step: basis={basis!r} is not a sparsity basis; accepted: {list(BASES)}.")
    _check_constraint("make_train_step", constraint)
    target_fn = _target_fn(target)

    def loss_fn(trainable: Trainable, batch: Any, t: jax.Array):
        task = task_loss(trainable.params, batch)
        s = expected_sparsity(trainable.params, basis=basis)
        held = s if constraint == "expected" else straight_through_sparsity(trainable.params, basis=basis)
        return task + lagrangian.penalty(held, t, trainable.lagrangian.as_dict()), (task, s)

    @nnx.jit
    def step(trainable: Trainable, optimizer: nnx.Optimizer, batch: Any) -> dict[str, jax.Array]:
        t = jnp.asarray(target_fn(optimizer.step[...]), jnp.float32)
        (loss, (task, s)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(trainable, batch, t)
        optimizer.update(trainable, grads)
        lambdas = trainable.lagrangian.as_dict()
        hard = hard_sparsity(trainable.params, basis=basis)
        return {"loss": loss, "task_loss": task, "expected_sparsity": s, "hard_sparsity": hard, "target": t, **lambdas}

    def checked(trainable: Trainable, optimizer: nnx.Optimizer, batch: Any) -> dict[str, jax.Array]:
        if not isinstance(trainable, Trainable):
            raise ValueError(
                f"train step: trainable={type(trainable).__name__} must be a flaxprune.nnx.Trainable; wrap the "
                "model: Trainable(model), and build the optimizer on it."
            )
        if not isinstance(optimizer, nnx.Optimizer):
            raise ValueError(f"train step: optimizer={type(optimizer).__name__} must be an nnx.Optimizer.")
        return step(trainable, optimizer, batch)

    return checked
