"""Language modeling as a :class:`~flaxprune.training.task.Task`.

Batches are FLOP's contiguous streams; the model's carry (SRU state,
Transformer-XL memory) crosses batches, is reset at the start of every epoch,
and is cut from the gradient (truncated backpropagation through time). The
score is bits per token on the validation split, the state carried across the
whole split.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxprune.data.batching import StreamBatcher
from flaxprune.training.evaluate import LOG2E, Evaluator

__all__ = ["LanguageModelingTask", "token_nll"]


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in nats, ``[batch, time]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


class _Batches:
    """StreamBatcher segments as dict batches; the position is the batcher's."""

    def __init__(self, batcher: StreamBatcher):
        self._batcher = batcher

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        b = next(self._batcher)
        return {"x": b.x.astype(np.int32), "y": b.y.astype(np.int32), "reset": np.asarray(b.new_epoch)}

    def state(self) -> dict[str, int]:
        return self._batcher.state()

    def restore(self, state: dict[str, int]) -> None:
        self._batcher.restore(state)


@dataclasses.dataclass
class LanguageModelingTask:
    """A language model on a corpus (``train``/``valid``/``test`` token arrays)."""

    model: Any
    model_config: Any
    corpus: Any
    mesh: Any
    batch_size: int
    seq_len: int
    eval_batch_size: int
    speed_batch_size: int
    score_name: str = "valid_bpc"
    higher_is_better: bool = False

    def __post_init__(self):
        self._evaluator = Evaluator(self.model, self.mesh, self.eval_batch_size, self.seq_len)

    def init_params(self, key: jax.Array) -> Any:
        tokens = jnp.zeros((1, self.seq_len), jnp.int32)
        return self.model.init({"params": key}, tokens, self.model.initial_carry(1), deterministic=True)["params"]

    def initial_params(self, fresh: Any) -> None:
        return None  # language models train from scratch (or from config.init_from)

    def initial_carry(self, batch_size: int) -> Any:
        return self.model.initial_carry(batch_size)

    def train_batches(self, process_index: int, process_count: int) -> _Batches:
        return _Batches(
            StreamBatcher(
                self.corpus.train,
                self.batch_size,
                self.seq_len,
                process_index=process_index,
                process_count=process_count,
            )
        )

    def batch_spec(self) -> dict[str, bool]:
        return {"x": True, "y": True, "reset": False}

    def loss(self, params: Any, batch: dict, carry: Any, rngs: dict) -> tuple[jax.Array, tuple[dict, Any]]:
        x, y = batch["x"], batch["y"]
        zeros = self.model.initial_carry(x.shape[0])
        carry = jax.tree.map(lambda c, z: jnp.where(batch["reset"], z, c), carry, zeros)
        carry = jax.lax.stop_gradient(carry)  # truncated backprop through time
        logits, new_carry = self.model.apply({"params": params}, x, carry, deterministic=False, rngs=rngs)
        ce = jnp.mean(token_nll(logits, y))
        return ce, ({"bpc": ce * LOG2E}, new_carry)

    def evaluate(self, params: Any, split: str) -> dict[str, float]:
        return {f"{split}_bpc": self._evaluator.bpc(params, getattr(self.corpus, split))}

    def speed_inputs(self) -> tuple:
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, self.corpus.vocab_size, (self.speed_batch_size, self.seq_len)).astype(np.int32)
        return tokens, self.model.initial_carry(self.speed_batch_size)

    def with_model(self, model: Any, model_config: Any) -> "LanguageModelingTask":
        return dataclasses.replace(self, model=model, model_config=model_config)
