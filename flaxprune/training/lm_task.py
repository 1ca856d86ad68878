"""Language modeling as a :class:`~flaxprune.training.task.Task`.

Batches are FLOP's contiguous streams; the model's carry (SRU state,
Transformer-XL memory) crosses batches, is reset at the start of every epoch,
and is cut from the gradient (truncated backpropagation through time). The
score is bits per token on the validation split, the state carried across the
whole split (:class:`Evaluator`). :func:`build_lm_task` builds the task an
experiment config describes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from flaxprune.data.batching import StreamBatcher, batchify, num_segments
from flaxprune.training import sharding
from flaxprune.training.config import batch_sizes, method_fields, plan_from_config

__all__ = [
    "LOG2E",
    "Evaluator",
    "LanguageModelingTask",
    "build_lm_task",
    "check_corpus_fits",
    "make_eval_step",
    "model_nll",
    "token_nll",
]

LOG2E = 1.4426950408889634  # bits per nat


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in nats, ``[batch, time]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def model_nll(model: Any, params: Any, x: jax.Array, y: jax.Array, carry: Any, **kwargs: Any) -> tuple[jax.Array, Any]:
    """``([batch, time] nll in nats, new carry)``: through the model's own ``token_nll`` when it has one.

    The word-level SRU's adaptive softmax computes the loss without building every word's logit
    (:mod:`flaxprune.layers.adaptive_loss`); other models return logits and the loss is their cross-entropy.
    ``kwargs``: ``deterministic`` and, in training, ``rngs``.
    """
    if hasattr(type(model), "token_nll"):
        return model.apply({"params": params}, x, y, carry, method="token_nll", **kwargs)
    logits, new_carry = model.apply({"params": params}, x, carry, **kwargs)
    return token_nll(logits, y), new_carry


def make_eval_step(model: Any) -> Callable[..., tuple[jax.Array, Any]]:
    """``eval_step(params, carry, x, y) -> (sum of nll in nats, new carry)`` with deterministic masks."""

    def eval_step(params, carry, x, y):
        nll, new_carry = model_nll(model, params, x, y, carry, deterministic=True)
        return jnp.sum(nll), new_carry

    return eval_step


class Evaluator:
    """Bits per token of a split under deterministic masks.

    The split is cut into ``batch_size`` contiguous streams (FLOP's
    ``create_batches``) read ``seq_len`` tokens at a time, the carried state
    starting at zero and never reset, so every token but the first of each
    stream is predicted with its full left context. On several hosts each
    feeds its own rows.
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
    score_name: str = "valid_bpc"  # valid_ppl on a word corpus ranks checkpoints the same (both grow with the nll)
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
        nll, new_carry = model_nll(self.model, params, x, y, carry, deterministic=False, rngs=rngs)
        ce = jnp.mean(nll)
        metrics = {"bpc": ce * LOG2E}
        if self.word_level:
            metrics["ppl"] = jnp.exp(ce)
        return ce, (metrics, new_carry)

    @property
    def word_level(self) -> bool:
        """A word corpus: scores in perplexity (``exp`` of the mean nll per word) besides bits per token."""
        return getattr(self.corpus, "vocab", None) is not None

    def evaluate(self, params: Any, split: str) -> dict[str, float]:
        total, count = self._evaluator.nll(params, getattr(self.corpus, split))
        out = {f"{split}_bpc": LOG2E * total / count}
        if self.word_level:
            out[f"{split}_ppl"] = float(np.exp(total / count))
        return out

    def speed_inputs(self) -> tuple:
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, self.corpus.vocab_size, (self.speed_batch_size, self.seq_len)).astype(np.int32)
        return tokens, self.model.initial_carry(self.speed_batch_size)

    def with_model(self, model: Any, model_config: Any) -> "LanguageModelingTask":
        return dataclasses.replace(self, model=model, model_config=model_config)


def check_corpus_fits(corpus: Any, train: Any) -> None:
    """Refuses a split too small for the batches the run reads from it, before the run writes anything.

    Training walks ``batch_size`` streams ``seq_len`` tokens at a time (:class:`StreamBatcher`): one
    batch needs ``num_segments(n, batch_size, seq_len) >= 1``, i.e. ``n >= batch_size * seq_len + 1``
    tokens (each input has a next token). The valid and test splits are read the same way by
    ``eval_batch_size`` streams (:class:`Evaluator`, after ``finalize`` the test split too): each stream
    must hold at least one whole segment, ``n >= eval_batch_size * seq_len + 1``, or the score would
    rest on a few tokens (none, for ``n <= eval_batch_size``).

    Args:
      corpus: a :class:`~flaxprune.data.corpus.Corpus` (``train``, ``valid``, ``test`` token arrays).
      train: ``config.train`` (``batch_size``, ``eval_batch_size``, ``seq_len``).

    Raises:
      ValueError: naming the split, its size in tokens and what the batch sizes need; or a token id
        outside ``[0, corpus.vocab_size)``.
    """
    for split in ("train", "valid", "test"):
        ids = np.asarray(getattr(corpus, split))
        if ids.size and (ids.min() < 0 or ids.max() >= corpus.vocab_size):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise ValueError(
                f"the {split} split holds token id {bad}, outside the vocabulary [0, {corpus.vocab_size}): "
                "the data and its vocabulary do not match; prepare the dataset again in a fresh data_dir."
            )
    seq_len = train.seq_len
    reads = [("train", train.batch_size, "config.train.batch_size", "a training batch")]
    reads += [(s, train.eval_batch_size, "config.train.eval_batch_size", "an evaluation") for s in ("valid", "test")]
    for split, batch, name, what in reads:
        n = len(getattr(corpus, split))
        if num_segments(n, batch, seq_len) < 1:
            raise ValueError(
                f"the {split} split has {n:,} tokens, too few for {what}: {name}={batch} streams of "
                f"config.train.seq_len={seq_len} tokens, each with its next token, need at least {batch} x "
                f"{seq_len} + 1 = {batch * seq_len + 1:,}. Use more data, or lower {name} or config.train.seq_len."
            )


def build_lm_task(config: Any, mesh: Mesh) -> LanguageModelingTask:
    """The language-modeling task of an experiment config: its corpus loaded, its model built.

    Raises:
      ValueError: for an unknown corpus or model field, or a split too small for the batches
        (:func:`check_corpus_fits`); FileNotFoundError for missing data.
    """
    from flaxprune.data.corpus import load_corpus  # tfds: imported when a corpus is needed
    from flaxprune.models import build_model

    data = {k: v for k, v in dict(config.data).items() if v is not None}
    data["data_dir"] = os.path.expanduser(data.get("data_dir") or "~/tensorflow_datasets")
    corpus = load_corpus(**data)
    check_corpus_fits(corpus, config.train)
    fields = dict(config.model)
    name = fields.pop("name")
    fields.update(method_fields(config))
    model, model_config = build_model(
        name, **fields, vocab_size=corpus.vocab_size, gated=bool(config.prune.enabled), plan=plan_from_config(config)
    )
    return LanguageModelingTask(
        model=model,
        model_config=model_config,
        corpus=corpus,
        mesh=mesh,
        seq_len=config.train.seq_len,
        **batch_sizes(config.train),
    )
