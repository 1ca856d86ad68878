"""The training state: everything a step reads and writes, as one pytree.

Pruning state lives in the params (``log_alpha``) and in the optimizer state
(the multipliers' Adam moments), so checkpointing and sharding treat it like
any other array. The PRNG key is stored as raw key data, which orbax saves
like any uint32 array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from flaxprune.lagrangian import init_multipliers
from flaxprune.training import sharding

__all__ = ["TrainState", "abstract_target", "init_state", "initial_state_fn", "state_shardings"]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # [] int32: updates done
    trainable: Any  # {'params': model params, 'lagrangian': {'lambda_1', 'lambda_2'}}
    opt_state: Any  # the combined optimizer's state
    key: jax.Array  # [2] uint32 raw key data of the run's root training key
    carry: Any  # the model's recurrent state, batch-leading, carried across batches
    finite: jax.Array  # [] bool: every loss so far was finite

    @property
    def params(self) -> Any:
        return self.trainable["params"]

    @property
    def rng(self) -> jax.Array:
        return jax.random.wrap_key_data(self.key)


def init_state(params: Any, tx: optax.GradientTransformation, key: jax.Array, carry: Any) -> TrainState:
    """A fresh state around initial ``params``; ``key`` is a typed PRNG key."""
    trainable = {"params": params, "lagrangian": init_multipliers()}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=tx.init(trainable),
        key=jax.random.key_data(key),
        carry=carry,
        finite=jnp.ones((), bool),
    )


def initial_state_fn(
    task: Any, tx: optax.GradientTransformation, seed: int, batch_size: int
) -> Callable[[], TrainState]:
    """A function of no arguments that builds a run's fresh state (fresh params, zero carry).

    The root key ``jax.random.key(seed)`` is split once: one half initialises
    the params, the other is the training key the steps fold the step into.
    ``jax.eval_shape`` of it gives the state's shapes without computing
    anything; ``jax.jit(fn, out_shardings=...)()`` builds it on the mesh.

    Args:
      task: supplies ``init_params(key)`` and ``initial_carry(batch_size)``.
      tx: the combined optimizer.
      seed: the run's seed (``config.train.seed``).
      batch_size: the global training batch (rows of the carry).
    """

    def create() -> TrainState:
        init_key, train_key = jax.random.split(jax.random.key(seed))
        return init_state(task.init_params(init_key), tx, train_key, task.initial_carry(batch_size))

    return create


def state_shardings(abstract: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Data parallel: everything replicated but the carried state, whose batch axis is split along ``data``."""
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    return shardings.replace(carry=sharding.carry_sharding(abstract.carry, mesh))


def abstract_target(abstract: TrainState, shardings: TrainState) -> TrainState:
    """``jax.ShapeDtypeStruct`` leaves with shardings: the target a checkpoint is restored against."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
