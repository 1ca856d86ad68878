"""The training state: everything a step reads and writes, as one pytree.

Pruning state lives in the params (``log_alpha``) and in the optimizer state
(the multipliers' Adam moments), so checkpointing and sharding treat it like
any other array. The PRNG key is stored as raw key data, which orbax saves
like any uint32 array.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from flaxprune.lagrangian import init_multipliers

__all__ = ["TrainState", "init_state"]


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
