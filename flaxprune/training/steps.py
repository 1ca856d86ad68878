"""The jitted train step, for any :class:`~flaxprune.training.task.Task`.

Loss = task loss + ``lambda_1 (s - t) + lambda_2 (s - t)^2`` (Wang et al.,
2020, Eq. 6), minimised over weights and gates and maximised over the
multipliers by one combined optimizer. Randomness is explicit: the step's key
is ``fold_in(root, step)``, split into the ``dropout`` and ``gates`` streams,
so a resumed run draws exactly what an uninterrupted one would. A distilling
run (:mod:`flaxprune.training.distill`) passes the teacher's params as the
step's third argument: the task loss is then the distillation objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxprune.gates import GateConfig
from flaxprune.lagrangian import penalty
from flaxprune.size import expected_sparsity, hard_sparsity, straight_through_sparsity
from flaxprune.training.state import TrainState

__all__ = ["make_train_step"]


def make_train_step(
    task: Any,
    tx: optax.GradientTransformation,
    *,
    prune: bool,
    target_fn: Callable[[jax.Array], jax.Array],
    gate: GateConfig,
    basis: str = "factors",
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
    reference: int | None = None,
    measure: Callable[[Any], jax.Array] | None = None,
    constraint: str = "expected",
    hard_weight_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_step(state, batch, teacher_params=None) -> (state, metrics)`` (not yet jitted).

    With ``teacher_params`` (a distilling GLUE task's teacher, an argument of
    the step rather than constants of its program) the task's loss gets them
    and distils; ``loss`` is then the distillation objective, and the task
    reports its parts.

    Args:
      task: supplies ``loss(params, batch, carry, rngs)`` (and ``teacher_params`` after them, to distil).
      tx: the combined optimizer (``flop_optimizer``).
      prune: add the Lagrangian penalty (False: plain training).
      target_fn: step -> target sparsity.
      gate: the gates' hyperparameters (for the expected sparsity).
      basis: the sparsity basis, ``'factors'`` or ``'dense'`` (:mod:`flaxprune.size`).
      learning_rate_fn: optional schedule, reported in the metrics.
      reference: the prunable count the sparsity is measured against (the
        model before compaction; None: the params' own).
      measure: for a run without the penalty (AGP), ``params -> sparsity``
        reported as the step's ``expected_sparsity`` (and ``target_fn`` its
        scheduled sparsity); None reports 0.
      constraint: the sparsity in the penalty: ``'expected'`` (FLOP's) or
        ``'hard'`` (:func:`~flaxprune.size.straight_through_sparsity`: the
        hard sparsity's value, the expected sparsity's gradient). The metrics'
        ``expected_sparsity`` is the expected one either way.
      hard_weight_fn: with ``'hard'``, step -> how far the held value has
        moved from the expected sparsity to the hard one (the ramp's progress,
        :func:`~flaxprune.lagrangian.ramp_progress`); None: all the way.

    The metrics: ``loss``, the task's own, ``expected_sparsity``, ``target``,
    ``lambda_1``, ``lambda_2``, ``grad_norm``, ``learning_rate`` (with a
    schedule) and, for a pruning run, ``hard_sparsity`` of the updated params
    (the gates' eval masks, or AGP's zeros by ``measure``).
    """

    def loss_fn(trainable, carry, batch, rngs, step, teacher_params):
        teacher = () if teacher_params is None else (teacher_params,)
        loss, (metrics, new_carry) = task.loss(trainable["params"], batch, carry, rngs, *teacher)
        if not prune:
            zero = jnp.zeros((), jnp.float32)
            if measure is not None:
                s = jax.lax.stop_gradient(measure(trainable["params"]))
                return loss, (loss, metrics, new_carry, s, target_fn(step))
            return loss, (loss, metrics, new_carry, zero, zero)
        s = expected_sparsity(trainable["params"], gate, basis, reference=reference)
        if constraint == "expected":
            held = s
        else:
            weight = 1.0 if hard_weight_fn is None else hard_weight_fn(step)
            held = straight_through_sparsity(trainable["params"], gate, basis, reference=reference, weight=weight)
        t = target_fn(step)
        return loss + penalty(held, t, trainable["lagrangian"]), (loss, metrics, new_carry, s, t)

    def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_params: Any = None):
        dropout_key, gates_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        rngs = {"dropout": dropout_key, "gates": gates_key}
        grads, (loss, task_metrics, new_carry, s, t) = jax.grad(loss_fn, has_aux=True)(
            state.trainable, state.carry, batch, rngs, state.step, teacher_params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {
            "loss": loss,
            **task_metrics,
            "expected_sparsity": s,
            "target": t,
            "lambda_1": trainable["lagrangian"]["lambda_1"],
            "lambda_2": trainable["lagrangian"]["lambda_2"],
            "grad_norm": optax.tree.norm(grads["params"]),
        }
        if prune:  # what surgery of the updated params would deliver (the eval masks), traced with the step
            metrics["hard_sparsity"] = hard_sparsity(trainable["params"], gate, basis, reference=reference)
        elif measure is not None:  # AGP: the zeros of the updated weights
            metrics["hard_sparsity"] = measure(trainable["params"])
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        new_state = state.replace(
            step=state.step + 1,
            trainable=trainable,
            opt_state=opt_state,
            carry=new_carry,
            finite=state.finite & jnp.isfinite(loss),
        )
        return new_state, metrics

    return train_step
