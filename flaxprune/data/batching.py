"""Contiguous-stream batches for truncated backpropagation through time.

FLOP's ``create_batches`` (Wang, Wohlwend & Lei, EMNLP 2020; the SRU
language-model code it builds on) cuts a corpus into ``batch_size``
contiguous streams and walks them ``seq_len`` tokens at a time, carrying the
recurrent state (or Transformer-XL memory) from one segment to the next.
Here the layout is ``[batch, time]`` (FLOP's is ``[time, batch]``), the walk
is a ``StreamBatcher`` whose position is two integers, so a checkpoint can
hold it and a restart continues exactly, and each process of a multi-host
job takes its own contiguous block of stream rows. NumPy only, deterministic.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Batch", "StreamBatcher", "batchify", "num_segments"]


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{owner}: {name}={value!r} must be an integer >= 1.")


def batchify(ids: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts a token stream into ``batch_size`` contiguous input and target streams.

    With ``L = ((N - 1) // batch_size) * batch_size`` for ``N = len(ids)``,
    ``x = ids[:L]`` and ``y = ids[1:L + 1]`` (the next token), each reshaped
    row-major to ``[batch_size, L // batch_size]``: row ``b`` holds tokens
    ``b * T .. (b + 1) * T - 1`` with ``T = L // batch_size``. The tail that
    does not fill a row is dropped.

    Args:
      ids: token ids, ``[N]``.
      batch_size: the number of streams, >= 1.

    Returns:
      ``(x, y)``, each ``[batch_size, T]``, views of ``ids`` (no copy).

    Raises:
      ValueError: if ``batch_size`` < 1 or ``ids`` is not 1-D.
    """
    _check_positive("batchify", batch_size=batch_size)
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"batchify: ids must be 1-D [n_tokens], got shape {ids.shape}.")
    length = (max(len(ids) - 1, 0) // batch_size) * batch_size
    x = ids[:length].reshape(batch_size, -1)  # [batch, T]
    y = ids[1 : length + 1].reshape(batch_size, -1)  # [batch, T]
    return x, y


def num_segments(n_tokens: int, batch_size: int, seq_len: int, *, drop_remainder: bool = True) -> int:
    """The number of ``seq_len`` segments per epoch of a stream of ``n_tokens``.

    Each of the ``batch_size`` streams is ``T = (n_tokens - 1) // batch_size``
    long; that makes ``T // seq_len`` full segments, plus one partial segment
    when ``drop_remainder`` is False and ``seq_len`` does not divide ``T``.

    Raises:
      ValueError: if ``batch_size`` or ``seq_len`` < 1, or ``n_tokens`` < 0.
    """
    _check_positive("num_segments", batch_size=batch_size, seq_len=seq_len)
    if n_tokens < 0:
        raise ValueError(f"num_segments: n_tokens={n_tokens} must be >= 0.")
    steps = max(n_tokens - 1, 0) // batch_size
    return steps // seq_len if drop_remainder else -(-steps // seq_len)


class Batch(NamedTuple):
    """One segment of every stream this process reads."""

    x: np.ndarray  # [local_batch, seq_len] inputs (seq_len shorter for a final partial segment)
    y: np.ndarray  # [local_batch, seq_len] targets: the next token of each input
    new_epoch: bool  # first segment of an epoch: start from a fresh recurrent state / memory


class StreamBatcher:
    """Walks ``batchify``'s streams ``seq_len`` tokens at a time, epoch after epoch.

    Iterating yields ``Batch(x, y, new_epoch)`` without end: segment ``i`` of
    an epoch is ``x[:, i * seq_len:(i + 1) * seq_len]`` (and ``y`` likewise),
    and after the last segment the next epoch starts again at position 0 with
    ``new_epoch=True``. ``len(batcher)`` is the number of segments per epoch,
    so one evaluation pass from a fresh batcher is
    ``itertools.islice(batcher, len(batcher))``.

    The position is ``state() -> {'epoch': int, 'segment': int}`` (the next
    segment to yield); ``restore(state)`` on a batcher over the same data and
    settings continues exactly where the saved one left off.

    With ``process_count`` > 1, ``batch_size`` is the global batch: process
    ``p`` yields rows ``p * k .. (p + 1) * k - 1`` with
    ``k = batch_size // process_count``, so the processes' rows partition the
    global batch and each one's streams stay contiguous.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        drop_remainder: bool = True,
    ):
        """Builds the batcher at epoch 0, segment 0.

        Args:
          ids: the token stream, ``[N]``, integer dtype (kept as is).
          batch_size: the global number of streams, >= 1, divisible by
            ``process_count``.
          seq_len: tokens per segment (the truncated-BPTT length), >= 1.
          process_index: this process, in ``[0, process_count)``.
          process_count: the number of processes sharing the batch, >= 1.
          drop_remainder: drop the last, partial segment (training); keep it
            to cover every token (evaluation).

        Raises:
          ValueError: for a bad argument (naming it, its value and what is
            accepted), or ``ids`` too short for one segment.
        """
        _check_positive("StreamBatcher", batch_size=batch_size, seq_len=seq_len, process_count=process_count)
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"StreamBatcher: process_index={process_index} must be in [0, process_count={process_count})."
            )
        if batch_size % process_count:
            raise ValueError(
                f"StreamBatcher: batch_size={batch_size} must be divisible by process_count={process_count}."
            )
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"StreamBatcher: ids must be 1-D integer [n_tokens], got {ids.dtype} {ids.shape}.")
        n = num_segments(len(ids), batch_size, seq_len, drop_remainder=drop_remainder)
        if n < 1:
            need = batch_size * (seq_len if drop_remainder else 1) + 1
            raise ValueError(
                f"StreamBatcher: ids has {len(ids)} tokens; batch_size={batch_size} and seq_len={seq_len} "
                f"(drop_remainder={drop_remainder}) need at least {need} for one segment."
            )
        x, y = batchify(ids, batch_size)  # [batch_size, T]
        rows = batch_size // process_count
        self._x = x[process_index * rows : (process_index + 1) * rows]  # [rows, T]
        self._y = y[process_index * rows : (process_index + 1) * rows]  # [rows, T]
        self.seq_len = seq_len
        self._num_segments = n
        self._epoch = 0
        self._segment = 0

    def __len__(self) -> int:
        """Segments per epoch."""
        return self._num_segments

    def __iter__(self) -> StreamBatcher:
        return self

    def __next__(self) -> Batch:
        start = self._segment * self.seq_len
        stop = start + self.seq_len
        batch = Batch(
            x=np.ascontiguousarray(self._x[:, start:stop]),  # [rows, seq_len]
            y=np.ascontiguousarray(self._y[:, start:stop]),  # [rows, seq_len]
            new_epoch=self._segment == 0,
        )
        self._segment += 1
        if self._segment == self._num_segments:
            self._epoch, self._segment = self._epoch + 1, 0
        return batch

    def state(self) -> dict[str, int]:
        """The position: the epoch and segment of the next batch."""
        return {"epoch": self._epoch, "segment": self._segment}

    def restore(self, state: dict[str, int]) -> None:
        """Moves to a position from ``state()``.

        Raises:
          ValueError: if ``state`` lacks ``'epoch'`` / ``'segment'``, or they
            are out of range (epoch >= 0, 0 <= segment < len(self)).
        """
        try:
            epoch, segment = int(state["epoch"]), int(state["segment"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"StreamBatcher.restore: state={state!r} must be {{'epoch': int, 'segment': int}}.") from e
        if epoch < 0 or not 0 <= segment < self._num_segments:
            raise ValueError(
                f"StreamBatcher.restore: state={state!r} needs epoch >= 0 and 0 <= segment < {self._num_segments} "
                "(segments per epoch with this data, batch_size and seq_len)."
            )
        self._epoch, self._segment = epoch, segment
