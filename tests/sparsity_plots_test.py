"""experiments/sparsity_plots.py: trajectories read from a run's metrics, summarised, plotted."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import sparsity_plots  # noqa: E402


def _write_metrics(run, rows):
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_of_a_hand_made_trajectory(tmp_path):
    rows = [
        {"step": 10, "kind": "train", "target": 0.25, "expected_sparsity": 0.2, "hard_sparsity": 0.2, "lambda_1": -1.0},
        {"step": 20, "kind": "train", "target": 0.5, "expected_sparsity": 0.53, "hard_sparsity": 0.54, "lambda_1": -3},
        {"step": 20, "kind": "eval", "valid_bpc": 2.0},
        {"step": 30, "kind": "train", "target": 0.5, "expected_sparsity": 0.51, "hard_sparsity": 0.505,
         "lambda_1": 0.5},
    ]
    _write_metrics(tmp_path / "run", rows)
    s = sparsity_plots.trajectory_summary(sparsity_plots.read_trajectory(tmp_path / "run"))
    assert s["ramp_end_step"] == 20 and s["target"] == 0.5
    assert s["final_hard_sparsity_error"] == pytest.approx(0.005)
    assert s["max_hard_sparsity_overshoot"] == pytest.approx(0.04)  # step 20, after the ramp ends
    assert s["max_expected_sparsity_overshoot"] == pytest.approx(0.03)
    assert s["min_lambda_1"] == -3.0 and s["final_lambda_1"] == 0.5
    out = tmp_path / "plots" / "t.png"
    assert sparsity_plots.main([f"--out={out}", str(tmp_path / "run")]) == 0
    assert out.stat().st_size > 0 and "| run | target |" in (out.with_suffix(".md")).read_text()


def test_bad_inputs_get_one_line(tmp_path, capsys):
    assert sparsity_plots.main([f"--out={tmp_path / 'x.png'}", str(tmp_path / "missing")]) == 2
    assert "metrics.jsonl is missing" in capsys.readouterr().err
    _write_metrics(tmp_path / "dense", [{"step": 1, "kind": "eval", "valid_bpc": 2.0}])
    assert sparsity_plots.main([f"--out={tmp_path / 'x.png'}", str(tmp_path / "dense")]) == 2
    assert "no train row with a target" in capsys.readouterr().err
    assert sparsity_plots.main([f"--out={tmp_path / 'x.txt'}", str(tmp_path / "dense")]) == 2
    assert not list(tmp_path.glob("x.*"))
