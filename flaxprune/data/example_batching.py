"""Shuffled batches of independent examples (GLUE), resumable and multi-host.

Language modelling walks contiguous streams (``batching.StreamBatcher``);
sentence classification, as in FLOP's BERT experiments (Wang, Wohlwend & Lei,
EMNLP 2020, Section 4.2), draws shuffled batches of whole examples.
``ExampleBatcher`` does that epoch after epoch, each epoch's order a
permutation drawn from ``numpy.random.default_rng([seed, epoch])``, so the
position is two integers (``state()``) and a restart continues exactly.
``eval_batches`` covers a split once, in order, padding the last batch to a
fixed shape and marking real rows in ``'weight'``. NumPy only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

__all__ = ["WEIGHT_KEY", "ExampleBatcher", "eval_batches"]

WEIGHT_KEY = "weight"  # eval_batches' mask: 1.0 on real rows, 0.0 on padding


def _check_int(owner: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name}={value!r} must be an integer >= {minimum}.")


def _check_arrays(owner: str, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError(f"{owner}: arrays must be a non-empty dict of arrays, got {type(arrays).__name__}.")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    leading = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
    if None in leading.values() or len(set(leading.values())) != 1:
        raise ValueError(f"{owner}: arrays must share their leading (example) dimension, got {leading}.")
    return arrays, next(iter(leading.values()))


def _check_processes(owner: str, batch_size: int, process_index: int, process_count: int) -> int:
    _check_int(owner, "batch_size", batch_size, 1)
    _check_int(owner, "process_count", process_count, 1)
    if isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer)):
        raise ValueError(f"{owner}: process_index={process_index!r} must be an integer.")
    if not 0 <= process_index < process_count:
        raise ValueError(f"{owner}: process_index={process_index} must be in [0, process_count={process_count}).")
    if batch_size % process_count:
        raise ValueError(f"{owner}: batch_size={batch_size} must be divisible by process_count={process_count}.")
    return batch_size // process_count


class ExampleBatcher:
    """Shuffled batches of examples, epoch after epoch, resumable.

    Iterating yields ``{key: array[rows, ...]}`` without end. Epoch ``e``
    visits the examples in the order ``default_rng([seed, e]).permutation(n)``
    (or ``0..n-1`` with ``shuffle=False``); batch ``b`` of an epoch is
    positions ``b * batch_size .. (b + 1) * batch_size - 1`` of that order.
    ``len(batcher)`` is the number of batches per epoch.

    The position is ``state() -> {'epoch': int, 'batch': int}`` (the next
    batch to yield); ``restore(state)`` on a batcher over the same data and
    settings continues exactly as the saved one would have.

    With ``process_count`` > 1, ``batch_size`` is the global batch: every
    process draws the same permutation and process ``p`` yields rows
    ``p * k .. (p + 1) * k - 1`` of each global batch, ``k = batch_size //
    process_count``, so the processes' rows partition the global batch.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = True,
        process_index: int = 0,
        process_count: int = 1,
    ):
        """Builds the batcher at epoch 0, batch 0.

        Args:
          arrays: ``{key: array[n, ...]}``, all with the same ``n`` >= 1.
          batch_size: the global number of examples per batch, >= 1,
            divisible by ``process_count``.
          seed: an integer >= 0; with the epoch it fixes each epoch's order.
          shuffle: shuffle each epoch; False keeps ``0..n-1``.
          drop_remainder: drop the ``n % batch_size`` examples an epoch's
            order leaves over (training; with shuffling, different ones each
            epoch). False yields them as a last, smaller batch; it needs
            ``process_count == 1``, since a short batch has no equal split.
          process_index: this process, in ``[0, process_count)``.
          process_count: the number of processes sharing the batch, >= 1.

        Raises:
          ValueError: for a bad argument (naming it, its value and what is
            accepted), or too few examples for one batch.
        """
        owner = "ExampleBatcher"
        self._arrays, n = _check_arrays(owner, arrays)
        self._rows = _check_processes(owner, batch_size, process_index, process_count)
        _check_int(owner, "seed", seed, 0)
        if not drop_remainder and process_count > 1 and n % batch_size:
            raise ValueError(
                f"{owner}: drop_remainder=False with process_count={process_count} would end each epoch with a "
                f"batch of {n % batch_size} rows, which does not split evenly across processes; use "
                "drop_remainder=True for training, or eval_batches (which pads) to cover every example."
            )
        per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
        if per_epoch < 1:
            raise ValueError(
                f"{owner}: {n} examples make no full batch of batch_size={batch_size} (drop_remainder=True)."
            )
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._n = n
        self._offset = process_index * self._rows
        self._batches_per_epoch = per_epoch
        self._epoch = 0
        self._batch = 0
        self._order_epoch = -1  # the epoch whose order _order holds
        self._order = np.arange(n)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self._batches_per_epoch

    def __iter__(self) -> ExampleBatcher:
        return self

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which ``epoch`` visits the examples, ``[n]`` indices."""
        if not self.shuffle:
            return np.arange(self._n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self._n)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._order_epoch != self._epoch:
            self._order, self._order_epoch = self.epoch_order(self._epoch), self._epoch
        start = self._batch * self.batch_size + self._offset
        index = self._order[start : min(start + self._rows, self._n)]  # [rows]; fewer in a final short batch
        batch = {k: v[index] for k, v in self._arrays.items()}
        self._batch += 1
        if self._batch == self._batches_per_epoch:
            self._epoch, self._batch = self._epoch + 1, 0
        return batch

    def state(self) -> dict[str, int]:
        """The position: the epoch and batch of the next batch."""
        return {"epoch": self._epoch, "batch": self._batch}

    def restore(self, state: Mapping[str, int]) -> None:
        """Moves to a position from ``state()``.

        Raises:
          ValueError: if ``state`` lacks ``'epoch'`` / ``'batch'``, or they are
            out of range (epoch >= 0, 0 <= batch < len(self)).
        """
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"ExampleBatcher.restore: state={state!r} must be {{'epoch': int, 'batch': int}}.") from e
        if epoch < 0 or not 0 <= batch < self._batches_per_epoch:
            raise ValueError(
                f"ExampleBatcher.restore: state={state!r} needs epoch >= 0 and 0 <= batch < "
                f"{self._batches_per_epoch} (batches per epoch with this data and batch_size)."
            )
        self._epoch, self._batch = epoch, batch


def eval_batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order, in fixed-shape batches (evaluation).

    The last batch is padded with zeros to ``batch_size`` rows, so a jitted
    eval step sees one shape; ``batch['weight']`` (float32, ``[rows]``) is 1.0
    on real examples and 0.0 on padding, for weighted sums and for dropping
    padded predictions. With ``process_count`` > 1, process ``p`` yields rows
    ``p * k .. (p + 1) * k - 1`` of each global batch (``k = batch_size //
    process_count``), padding included.

    Args:
      arrays: ``{key: array[n, ...]}``, all with the same ``n`` >= 1, no key
        named ``'weight'``.
      batch_size: the global rows per batch, >= 1, divisible by
        ``process_count``.
      process_index: this process, in ``[0, process_count)``.
      process_count: the number of processes, >= 1.

    Yields:
      ``{key: array[k, ...], 'weight': float32[k]}``, ``ceil(n / batch_size)``
      times.

    Raises:
      ValueError: for a bad argument (checked on the call, before iterating).
    """
    owner = "eval_batches"
    arrays, n = _check_arrays(owner, arrays)
    rows = _check_processes(owner, batch_size, process_index, process_count)
    if WEIGHT_KEY in arrays:
        raise ValueError(f"{owner}: arrays already has a {WEIGHT_KEY!r} key; eval_batches adds that one.")
    return _eval_batches(arrays, n, batch_size, process_index * rows, rows)


def _eval_batches(arrays, n, batch_size, offset, rows) -> Iterator[dict[str, np.ndarray]]:
    for start in range(0, n, batch_size):
        lo, hi = start + offset, start + offset + rows  # this process's global rows
        real = max(0, min(hi, n) - lo)  # rows of it that hold examples
        batch = {}
        for key, value in arrays.items():
            part = np.zeros((rows, *value.shape[1:]), value.dtype)  # [rows, ...]
            part[:real] = value[lo : lo + real]
            batch[key] = part
        weight = np.zeros(rows, np.float32)  # [rows]
        weight[:real] = 1.0
        batch[WEIGHT_KEY] = weight
        yield batch
