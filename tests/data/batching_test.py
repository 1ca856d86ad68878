"""StreamBatcher against hand-computed layouts, coverage, resume and process slices."""

import itertools

import numpy as np
import pytest

from flaxprune.data import Batch, StreamBatcher, batchify, num_segments


def _take(batcher, n):
    return list(itertools.islice(batcher, n))


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        assert a.new_epoch == b.new_epoch


def test_batchify_hand_computed():
    x, y = batchify(np.arange(11), 2)  # L = (10 // 2) * 2 = 10
    np.testing.assert_array_equal(x, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(y, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    x, y = batchify(np.arange(10), 3)  # L = (9 // 3) * 3 = 9; token 9 is only a target
    np.testing.assert_array_equal(x, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(y, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])


def test_batchify_keeps_dtype_and_handles_short_input():
    x, y = batchify(np.arange(5, dtype=np.uint8), 1)
    assert x.dtype == np.uint8 and x.shape == (1, 4)
    x, y = batchify(np.arange(2), 4)  # too short for one column
    assert x.shape == (4, 0) and y.shape == (4, 0)


@pytest.mark.parametrize(
    "n_tokens, batch_size, seq_len, drop, expected",
    [
        (11, 2, 2, True, 2),  # T = 5
        (11, 2, 2, False, 3),
        (11, 2, 5, True, 1),
        (11, 2, 6, True, 0),
        (11, 2, 6, False, 1),
        (10, 3, 3, True, 1),  # T = 3
        (1, 1, 1, False, 0),
        (0, 1, 1, True, 0),
    ],
)
def test_num_segments(n_tokens, batch_size, seq_len, drop, expected):
    assert num_segments(n_tokens, batch_size, seq_len, drop_remainder=drop) == expected


def test_first_segments_hand_computed():
    batcher = StreamBatcher(np.arange(11), batch_size=2, seq_len=2)
    assert len(batcher) == 2
    first, second, third = _take(batcher, 3)
    assert isinstance(first, Batch)
    np.testing.assert_array_equal(first.x, [[0, 1], [5, 6]])
    np.testing.assert_array_equal(first.y, [[1, 2], [6, 7]])
    np.testing.assert_array_equal(second.x, [[2, 3], [7, 8]])
    np.testing.assert_array_equal(second.y, [[3, 4], [8, 9]])
    np.testing.assert_array_equal(third.x, first.x)  # epoch 1 restarts at position 0
    assert [b.new_epoch for b in (first, second, third)] == [True, False, True]


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_every_position_once_per_epoch_in_order(drop_remainder):
    ids = np.arange(103)
    batcher = StreamBatcher(ids, batch_size=4, seq_len=7, drop_remainder=drop_remainder)
    x, y = batchify(ids, 4)  # [4, 25]
    n = len(batcher)
    assert n == (3 if drop_remainder else 4)
    for epoch in range(3):
        batches = _take(batcher, n)
        assert [b.new_epoch for b in batches] == [True] + [False] * (n - 1)
        covered = x.shape[1] if not drop_remainder else n * 7
        np.testing.assert_array_equal(np.concatenate([b.x for b in batches], axis=1), x[:, :covered])
        np.testing.assert_array_equal(np.concatenate([b.y for b in batches], axis=1), y[:, :covered])
        assert batcher.state() == {"epoch": epoch + 1, "segment": 0}
    if not drop_remainder:
        assert batches[-1].x.shape == (4, 25 - 3 * 7)


def test_state_restore_continues_identically():
    ids = np.random.default_rng(0).integers(0, 256, size=200)
    total = 12  # crosses epoch boundaries: 4 segments per epoch
    uninterrupted = _take(StreamBatcher(ids, batch_size=3, seq_len=16), total)
    for k in range(total):
        first = StreamBatcher(ids, batch_size=3, seq_len=16)
        head = _take(first, k)
        state = first.state()
        assert state == {"epoch": k // 4, "segment": k % 4}
        resumed = StreamBatcher(ids, batch_size=3, seq_len=16)
        resumed.restore(state)
        _assert_same(head + _take(resumed, total - k), uninterrupted)


def test_restore_accepts_numpy_scalars():
    batcher = StreamBatcher(np.arange(200), batch_size=3, seq_len=16)
    batcher.restore({"epoch": np.int64(2), "segment": np.array(3)})
    assert batcher.state() == {"epoch": 2, "segment": 3}
    assert not next(batcher).new_epoch and next(batcher).new_epoch


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_partition_rows(process_count):
    ids = np.arange(1000)
    whole = _take(StreamBatcher(ids, batch_size=8, seq_len=10), 5)
    parts = [
        _take(StreamBatcher(ids, 8, 10, process_index=p, process_count=process_count), 5) for p in range(process_count)
    ]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([part[step].x for part in parts], axis=0), batch.x)
        np.testing.assert_array_equal(np.concatenate([part[step].y for part in parts], axis=0), batch.y)
        assert all(part[step].x.shape == (8 // process_count, 10) for part in parts)
        assert all(part[step].new_epoch == batch.new_epoch for part in parts)


def test_batches_are_fresh_contiguous_arrays():
    ids = np.arange(50)
    batch = next(StreamBatcher(ids, batch_size=2, seq_len=3))
    assert batch.x.flags.c_contiguous and not np.shares_memory(batch.x, ids)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0, "seq_len": 2}, "batch_size=0"),
        ({"batch_size": 2, "seq_len": 0}, "seq_len=0"),
        ({"batch_size": 2.0, "seq_len": 2}, "batch_size=2.0"),
        ({"batch_size": 4, "seq_len": 2, "process_count": 3}, "divisible by process_count=3"),
        (
            {"batch_size": 4, "seq_len": 2, "process_count": 2, "process_index": 2},
            r"process_index=2 must be in \[0, process_count=2\)",
        ),
        ({"batch_size": 4, "seq_len": 2, "process_count": 0}, "process_count=0"),
        ({"batch_size": 4, "seq_len": 30}, "100 tokens; batch_size=4 and seq_len=30 .* at least 121"),
        ({"batch_size": 200, "seq_len": 1, "drop_remainder": False}, "at least 201"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamBatcher(np.arange(100), **kwargs)


def test_bad_ids_and_states_raise():
    with pytest.raises(ValueError, match="1-D integer"):
        StreamBatcher(np.zeros((10, 10), np.int32), 2, 2)
    with pytest.raises(ValueError, match="1-D integer"):
        StreamBatcher(np.zeros(100, np.float32), 2, 2)
    with pytest.raises(ValueError, match="batch_size=0"):
        batchify(np.arange(10), 0)
    batcher = StreamBatcher(np.arange(100), 2, 10)  # 4 segments per epoch
    with pytest.raises(ValueError, match="0 <= segment < 4"):
        batcher.restore({"epoch": 0, "segment": 4})
    with pytest.raises(ValueError, match="epoch >= 0"):
        batcher.restore({"epoch": -1, "segment": 0})
    with pytest.raises(ValueError, match="must be"):
        batcher.restore({"step": 3})
