"""The jitted train and eval steps of a FLOP language model.

Loss = cross-entropy + ``lambda_1 (s - t) + lambda_2 (s - t)^2`` (Wang et al.,
2020, Eq. 6), minimised over weights and gates and maximised over the
multipliers by one combined optimizer. Randomness is explicit: the step's key
is ``fold_in(root, step)``, split into the ``dropout`` and ``gates`` streams,
so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxprune.gates import GateConfig
from flaxprune.lagrangian import penalty
from flaxprune.size import expected_sparsity
from flaxprune.training.state import TrainState

__all__ = ["make_eval_step", "make_train_step", "token_nll"]

LOG2E = 1.0 / math.log(2.0)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in nats, ``[batch, time]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _reset(carry: Any, zeros: Any, reset: jax.Array) -> Any:
    return jax.tree.map(lambda c, z: jnp.where(reset, z, c), carry, zeros)


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    *,
    prune: bool,
    target_fn: Callable[[jax.Array], jax.Array],
    gate: GateConfig,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_step(state, batch) -> (state, metrics)`` (not yet jitted).

    Args:
      model: a language model module (``apply(variables, tokens, carry,
        deterministic)`` -> ``(logits, carry)``, ``initial_carry(batch)``).
      tx: the combined optimizer (``flop_optimizer``).
      prune: add the Lagrangian penalty (False: plain training).
      target_fn: step -> target sparsity.
      gate: the gates' hyperparameters (for the expected sparsity).
      learning_rate_fn: optional schedule, reported in the metrics.

    The batch is ``{'x': [B, T] int32, 'y': [B, T] int32, 'reset': [] bool}``;
    ``reset`` zeroes the carried state (start of an epoch).
    """

    def loss_fn(trainable, carry, x, y, dropout_key, gates_key, step):
        logits, new_carry = model.apply(
            {"params": trainable["params"]},
            x,
            carry,
            deterministic=False,
            rngs={"dropout": dropout_key, "gates": gates_key},
        )
        ce = jnp.mean(token_nll(logits, y))
        if not prune:
            zero = jnp.zeros((), jnp.float32)
            return ce, (ce, new_carry, zero, zero)
        s = expected_sparsity(trainable["params"], gate)
        t = target_fn(step)
        return ce + penalty(s, t, trainable["lagrangian"]), (ce, new_carry, s, t)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        x, y = batch["x"], batch["y"]
        dropout_key, gates_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        carry = _reset(state.carry, model.initial_carry(x.shape[0]), batch["reset"])
        carry = jax.lax.stop_gradient(carry)  # truncated backprop through time
        grads, (ce, new_carry, s, t) = jax.grad(loss_fn, has_aux=True)(
            state.trainable, carry, x, y, dropout_key, gates_key, state.step
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        finite = jnp.isfinite(ce)
        metrics = {
            "loss": ce,
            "bpc": ce * LOG2E,
            "expected_sparsity": s,
            "target": t,
            "lambda_1": trainable["lagrangian"]["lambda_1"],
            "lambda_2": trainable["lagrangian"]["lambda_2"],
            "grad_norm": optax.tree.norm(grads["params"]),
        }
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        new_state = state.replace(
            step=state.step + 1,
            trainable=trainable,
            opt_state=opt_state,
            carry=new_carry,
            finite=state.finite & finite,
        )
        return new_state, metrics

    return train_step


def make_eval_step(model: Any) -> Callable[..., tuple[jax.Array, Any]]:
    """``eval_step(params, carry, x, y) -> (sum of nll in nats, new carry)`` with deterministic masks."""

    def eval_step(params, carry, x, y):
        logits, new_carry = model.apply({"params": params}, x, carry, deterministic=True)
        return jnp.sum(token_nll(logits, y)), new_carry

    return eval_step
