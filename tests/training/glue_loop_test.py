"""GLUE fine-tuning through the shared loop, on a tiny self-written BERT checkpoint and TSVs."""

import json

import chex
import pytest

from flaxprune.training import loop, runs

from tiny_runs import tiny_glue_config, write_tiny_glue


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


@pytest.mark.e2e
def test_flop_fine_tuning_shrinks_to_the_same_dev_metrics(setup, tmp_path):
    root, folder = setup
    logs = []
    summary = loop.train(tiny_glue_config(root, folder), tmp_path, log=logs.append, progress=False)
    assert any("initialised from the task's pretrained weights, gates from the spectrum" in line for line in logs)
    assert summary["status"] == "done"
    assert summary["reduced_valid_accuracy"] == pytest.approx(summary["valid_accuracy"])
    assert summary["reduced_params"] <= summary["params"]
    assert summary["sparsity_basis"] == "dense" and summary["prunable_params"] < summary["params"]
    targets = [r["target"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert targets[0] < 0 and targets[-1] == pytest.approx(0.5)  # the ramp starts at the all-open sparsity
    assert "log_alpha" in json.dumps(runs.report_checkpoint(tmp_path)) or "factorized" in runs.report_checkpoint(
        tmp_path
    )
    assert runs.evaluate_run(tmp_path, "valid", reduced=True)["valid_accuracy"] == pytest.approx(
        summary["reduced_valid_accuracy"]
    )


@pytest.mark.e2e
def test_dense_baseline_and_resume(setup, tmp_path):
    root, folder = setup
    cfg = tiny_glue_config(root, folder, **{"prune.enabled": False})
    full = loop.train(cfg, tmp_path / "full", log=lambda _: None, progress=False)
    assert "reduced_params" not in full and full["status"] == "done"

    def stop(step):  # a crash after the step-3 checkpoint: the rerun resumes from it
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, tmp_path / "cut", on_step=stop, log=lambda _: None, progress=False)
    logs = []
    loop.train(cfg, tmp_path / "cut", log=logs.append, progress=False)
    assert any("resumed from step 3" in line for line in logs)

    chex.assert_trees_all_equal(runs.load_run(tmp_path / "cut")[1], runs.load_run(tmp_path / "full")[1])


def test_unknown_task_is_refused_before_writing(setup, tmp_path):
    root, folder = setup
    with pytest.raises(ValueError, match="sst3"):
        loop.train(tiny_glue_config(root, folder, **{"data.task": "sst3"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
