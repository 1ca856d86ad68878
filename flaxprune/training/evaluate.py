"""Evaluation over a whole split with the hidden state carried throughout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from flaxprune.data.batching import batchify
from flaxprune.training import sharding

__all__ = ["Evaluator", "make_eval_step"]

LOG2E = 1.4426950408889634  # bits per nat


def make_eval_step(model: Any) -> Callable[..., tuple[jax.Array, Any]]:
    """``eval_step(params, carry, x, y) -> (sum of nll in nats, new carry)`` with deterministic masks."""

    def eval_step(params, carry, x, y):
        logits, new_carry = model.apply({"params": params}, x, carry, deterministic=True)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        return jnp.sum(nll), new_carry

    return eval_step


class Evaluator:
    """Bits per token of a split under deterministic masks.

    The split is cut into ``batch_size`` contiguous streams (FLOP's
    ``create_batches``) read ``seq_len`` tokens at a time, the carried state
    starting at zero and never reset, so every token but the first of each
    stream is predicted with its full left context.
    """

    def __init__(self, model: Any, mesh: Mesh, batch_size: int, seq_len: int):
        sharding.check_divisible("eval batch_size", batch_size, mesh)
        self.model, self.mesh, self.batch_size, self.seq_len = model, mesh, batch_size, seq_len
        self._step = jax.jit(make_eval_step(model))

    def nll(self, params: Any, ids: np.ndarray) -> tuple[float, int]:
        """(total nll in nats, number of tokens predicted)."""
        x_all, y_all = batchify(ids, self.batch_size)  # [batch, n]
        carry = self.model.initial_carry(self.batch_size)
        carry = jax.device_put(carry, sharding.carry_sharding(carry, self.mesh))
        total, count = 0.0, 0
        rows = slice(None)
        if jax.process_count() > 1:
            per = self.batch_size // jax.process_count()
            rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
        for start in range(0, x_all.shape[1], self.seq_len):
            x = sharding.put_batch(x_all[rows, start : start + self.seq_len].astype(np.int32), self.mesh)
            y = sharding.put_batch(y_all[rows, start : start + self.seq_len].astype(np.int32), self.mesh)
            s, carry = self._step(params, carry, x, y)
            total += float(s)
            count += int(np.prod(y.shape))
        return total, count

    def bpc(self, params: Any, ids: np.ndarray) -> float:
        """Bits per token (bits per character for byte-level data)."""
        total, count = self.nll(params, ids)
        return LOG2E * total / count
