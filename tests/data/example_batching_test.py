"""ExampleBatcher: determinism, exact resume, epoch coverage, process slices; eval_batches padding."""

import itertools

import numpy as np
import pytest

from flaxprune.data import ExampleBatcher, eval_batches

N = 10


def _arrays(n=N):
    return {"x": np.arange(n) * 10, "y": np.arange(2 * n, dtype=np.float32).reshape(n, 2)}


def _take(batcher, n):
    return list(itertools.islice(batcher, n))


def _assert_same(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.keys() == q.keys()
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])


def test_rows_stay_together_and_epoch_covers_each_example_once():
    batcher = ExampleBatcher(_arrays(), 3, seed=0)
    assert len(batcher) == 3  # 10 // 3; one example left over per epoch
    for epoch in range(3):
        batches = _take(batcher, len(batcher))
        x = np.concatenate([b["x"] for b in batches])
        assert len(set(x)) == 9  # no repeats within an epoch
        np.testing.assert_array_equal(x, batcher.epoch_order(epoch)[:9] * 10)
        for b in batches:
            np.testing.assert_array_equal(b["y"][:, 0], b["x"] / 10 * 2)  # rows of both arrays match
    assert batcher.state() == {"epoch": 3, "batch": 0}
    # Epochs differ in order; shuffle=False keeps 0..n-1.
    assert not np.array_equal(batcher.epoch_order(0), batcher.epoch_order(1))
    plain = ExampleBatcher(_arrays(), 5, seed=0, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in _take(plain, 4)]), np.tile(np.arange(10) * 10, 2))


def test_determinism_from_seed_and_epoch():
    a = _take(ExampleBatcher(_arrays(), 4, seed=7), 7)
    b = _take(ExampleBatcher(_arrays(), 4, seed=7), 7)
    _assert_same(a, b)
    c = _take(ExampleBatcher(_arrays(), 4, seed=8), 7)
    assert any(not np.array_equal(p["x"], q["x"]) for p, q in zip(a, c))
    np.testing.assert_array_equal(
        ExampleBatcher(_arrays(), 4, seed=7).epoch_order(5), np.random.default_rng([7, 5]).permutation(N)
    )


@pytest.mark.parametrize("stop", [0, 1, 2, 3, 5, 8])
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_restore_continues_exactly(stop, drop_remainder):
    whole = _take(ExampleBatcher(_arrays(), 4, seed=3, drop_remainder=drop_remainder), 12)
    first = ExampleBatcher(_arrays(), 4, seed=3, drop_remainder=drop_remainder)
    _take(first, stop)
    state = dict(first.state())
    resumed = ExampleBatcher(_arrays(), 4, seed=3, drop_remainder=drop_remainder)
    resumed.restore(state)
    _assert_same(_take(resumed, 12 - stop), whole[stop:])


def test_keep_remainder_gives_a_short_last_batch():
    batcher = ExampleBatcher(_arrays(), 4, seed=1, drop_remainder=False)
    assert len(batcher) == 3
    sizes = [len(b["x"]) for b in _take(batcher, 6)]
    assert sizes == [4, 4, 2, 4, 4, 2]
    epoch0 = np.concatenate([b["x"] for b in _take(ExampleBatcher(_arrays(), 4, seed=1, drop_remainder=False), 3)])
    assert sorted(epoch0) == list(np.arange(N) * 10)


def test_process_slices_partition_the_global_batch():
    full = _take(ExampleBatcher(_arrays(12), 6, seed=2), 5)
    parts = [
        _take(ExampleBatcher(_arrays(12), 6, seed=2, process_index=p, process_count=3), 5) for p in range(3)
    ]
    for step in range(5):
        assert all(len(parts[p][step]["x"]) == 2 for p in range(3))
        np.testing.assert_array_equal(np.concatenate([parts[p][step]["x"] for p in range(3)]), full[step]["x"])


def test_argument_errors():
    with pytest.raises(ValueError, match="batch_size=5 must be divisible by process_count=2"):
        ExampleBatcher(_arrays(), 5, seed=0, process_count=2)
    with pytest.raises(ValueError, match=r"process_index=2 must be in \[0, process_count=2\)"):
        ExampleBatcher(_arrays(), 4, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        ExampleBatcher(_arrays(), 0, seed=0)
    with pytest.raises(ValueError, match="seed=-1 must be an integer >= 0"):
        ExampleBatcher(_arrays(), 2, seed=-1)
    with pytest.raises(ValueError, match="10 examples make no full batch of batch_size=16"):
        ExampleBatcher(_arrays(), 16, seed=0)
    with pytest.raises(ValueError, match="share their leading"):
        ExampleBatcher({"x": np.zeros(3), "y": np.zeros(4)}, 2, seed=0)
    with pytest.raises(ValueError, match="non-empty dict"):
        ExampleBatcher({}, 2, seed=0)
    with pytest.raises(ValueError, match="does not split evenly across processes"):
        ExampleBatcher(_arrays(), 4, seed=0, drop_remainder=False, process_count=2)
    batcher = ExampleBatcher(_arrays(), 3, seed=0)
    with pytest.raises(ValueError, match=r"0 <= batch < 3"):
        batcher.restore({"epoch": 0, "batch": 3})
    with pytest.raises(ValueError, match="must be {'epoch': int, 'batch': int}"):
        batcher.restore({"epoch": 0})


def test_eval_batches_pad_and_mark_real_rows():
    batches = list(eval_batches(_arrays(), 4))
    assert len(batches) == 3
    assert all(b["x"].shape == (4,) and b["y"].shape == (4, 2) and b["weight"].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), [*range(0, 100, 10), 0, 0])
    np.testing.assert_array_equal(batches[-1]["weight"], [1, 1, 0, 0])
    np.testing.assert_array_equal(batches[-1]["y"][2:], 0)
    assert sum(b["weight"].sum() for b in batches) == N


def test_eval_batches_process_slices():
    # Global batches of 4 over 10 rows: [0..3], [4..7], [8, 9, pad, pad]; each process takes 2 rows.
    p0 = list(eval_batches(_arrays(), 4, process_index=0, process_count=2))
    p1 = list(eval_batches(_arrays(), 4, process_index=1, process_count=2))
    assert [list(b["x"]) for b in p0] == [[0, 10], [40, 50], [80, 90]]
    assert [list(b["x"]) for b in p1] == [[20, 30], [60, 70], [0, 0]]
    assert [list(b["weight"]) for b in p1] == [[1, 1], [1, 1], [0, 0]]
    with pytest.raises(ValueError, match="already has a 'weight' key"):
        eval_batches({"weight": np.ones(3)}, 2)
    with pytest.raises(ValueError, match="batch_size=3 must be divisible by process_count=2"):
        eval_batches(_arrays(), 3, process_count=2)
