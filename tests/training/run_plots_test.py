"""Run plots: metrics.jsonl read as the loop writes it, the ranks' grid by hand, valid PNGs written and only those."""

import json

import numpy as np
import pytest

from flaxprune import cli
from flaxprune.layers.layout import LayerRow
from flaxprune.training.run_plots import PLOT_FILES, plot_run, rank_grid, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _write(workdir, rows, tail=""):
    workdir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (workdir / "metrics.jsonl").write_text(text, encoding="utf-8")


PRUNED = [
    {"step": 10, "kind": "train", "loss": 2.0, "bpc": 3.0, "target": 0.1, "expected_sparsity": 0.05,
     "hard_sparsity": 0.0, "lambda_1": -1.0, "lambda_2": 0.0, "grad_norm": 1.0},
    {"step": 20, "kind": "train", "loss": 1.5, "bpc": 2.5, "target": 0.2, "expected_sparsity": 0.15,
     "hard_sparsity": 0.1, "lambda_1": -3.0, "lambda_2": 0.0, "grad_norm": 1.0},
    {"step": 20, "kind": "eval", "valid_bpc": 2.7, "hard_sparsity": 0.1},
    {"step": 20, "kind": "train", "loss": 1.4, "bpc": 2.4, "target": 0.2, "expected_sparsity": 0.16,
     "hard_sparsity": 0.1, "lambda_1": -2.0, "lambda_2": 0.0, "grad_norm": 1.0},  # a resume logs step 20 again
]


def test_read_metrics_keeps_the_last_row_of_a_step_and_skips_a_cut_line(tmp_path):
    _write(tmp_path, PRUNED, tail='{"step": 30, "kind": "tr')  # a crash cut the last line
    m = read_metrics(tmp_path)
    assert set(m) == {"train", "eval"}
    np.testing.assert_array_equal(m["train"]["step"], [10, 20])
    np.testing.assert_array_equal(m["train"]["loss"], [2.0, 1.4])
    np.testing.assert_array_equal(m["train"]["lambda_1"], [-1.0, -2.0])
    np.testing.assert_array_equal(m["eval"]["valid_bpc"], [2.7])
    with pytest.raises(FileNotFoundError, match="metrics.jsonl is missing"):
        read_metrics(tmp_path / "nothing")


def _row(path, rank, full, gated=True, kind="factorized"):
    return LayerRow(path, kind, (4, 4), rank, full, 0, 0, gated)


def test_rank_grid_splits_paths_at_the_last_numbered_module():
    rows = [
        _row("bert/encoder/layer_0/attention/query", 3, 8),
        _row("bert/encoder/layer_0/output", 5, 8),
        _row("bert/encoder/layer_1/attention/query", 8, 8),
        _row("output", 2, 4),
        _row("pooler", 4, 4, gated=False, kind="dense"),  # not pruned: not in the grid
        _row("(other params)", 0, 0, gated=False, kind="other"),
    ]
    layers, projections, cells = rank_grid(rows)
    assert layers == ["bert/encoder/layer_0", "bert/encoder/layer_1", "(model)"]
    assert projections == ["attention/query", "output"]
    assert cells[("bert/encoder/layer_0", "attention/query")] == (3, 8)
    assert cells[("(model)", "output")].kept == 2 and cells[("(model)", "output")].full == 4
    assert ("bert/encoder/layer_1", "output") not in cells


def test_plot_run_writes_valid_pngs_and_nothing_else(tmp_path):
    _write(tmp_path, PRUNED)
    (tmp_path / "notes.txt").write_text("mine")
    written = plot_run(tmp_path, rows=[_row("layers_0/W", 3, 8), _row("layers_1/W", 6, 8)])
    assert [p.name for p in written] == list(PLOT_FILES)
    for p in written:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*PLOT_FILES, "metrics.jsonl", "notes.txt"])


def test_an_unpruned_run_gets_only_its_curves(tmp_path):
    _write(tmp_path, [{"step": 5, "kind": "train", "loss": 1.0, "target": 0.0, "expected_sparsity": 0.0},
                      {"step": 5, "kind": "eval", "valid_accuracy": 0.5}])
    assert [p.name for p in plot_run(tmp_path)] == [PLOT_FILES[0]]  # no checkpoint, no target: no other plot


def test_the_plot_command_writes_them_and_a_missing_run_is_one_line(tmp_path, capsys):
    _write(tmp_path, PRUNED)
    assert cli.main(["plot", f"--workdir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / PLOT_FILES[0]}" in out and f"wrote {tmp_path / PLOT_FILES[1]}" in out
    assert cli.main(["plot", f"--workdir={tmp_path / 'none'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flaxprune plot: ") and "metrics.jsonl is missing" in err[0]
