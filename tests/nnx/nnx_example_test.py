"""experiments/nnx_prune_example.py end to end on tiny flags, and its one-line errors for bad flags."""

import importlib.util
import pathlib

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "nnx_prune_example.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("nnx_prune_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
def test_prunes_trains_shrinks_and_times_on_tiny_flags(example, capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 5)).astype(np.float32)
    np.savez(tmp_path / "task.npz", x=x, y=(x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0))
    flags = ["--data", str(tmp_path / "task.npz"), "--target=0.4", "--steps=20", "--warmup=5", "--hidden=16"]
    assert example.main(flags + ["--batch=16", "--log-every=10"]) == 0
    out = capsys.readouterr().out
    assert "64 train / 16 test rows, 5 features, 4 classes" in out
    assert out.count("step ") == 2 and "hard sparsity" in out
    line = next(x for x in out.splitlines() if x.startswith("params after"))
    assert float(line.split("max |reduced - gated| = ")[1].split(";")[0]) < 1e-4
    assert "jitted eval forward, batch 16: gated" in out and "(other params)" in out


def test_the_synthetic_task_depends_on_20_inputs(example):
    x, y = example.synthetic_task(0)
    assert x.shape == (example.N_ROWS, 64) and y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    x[:, 20:] = 0.0
    np.testing.assert_array_equal(np.argmax(x[:, :10] + x[:, 10:20] ** 2, -1), y)


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--target=1.0"], "--target=1.0 must be in [0, 1)"),
        (["--steps=0"], "--steps=0 must be >= 1"),
        (["--gate-lr=nan"], "--gate-lr=nan"),
        (["--hidden=many"], "--hidden: invalid int value: 'many'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--data=/nonexistent/task.npz"], "--data=/nonexistent/task.npz is not a readable .npz file"),
    ],
)
def test_bad_flags_print_one_line_and_exit_2(example, capsys, flags, words):
    assert example.main(flags) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("nnx_prune_example.py: error: "), captured.err
    assert words in captured.err


def test_a_data_file_without_labels_is_a_bad_flag(example, capsys, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((20, 3)))
    assert example.main(["--data", str(tmp_path / "bad.npz")]) == 2
    assert "must hold arrays 'x' and 'y', found ['x']" in capsys.readouterr().err
