"""Compaction during training: the run drops closed components, trains on smaller shapes, resumes exactly."""

import json

import chex
import jax
import ml_collections
import numpy as np
import pytest
from tiny_runs import tiny_lm_config

import flaxprune as fp
from flaxprune.training import loop, runs
from flaxprune.training.checkpoint import CheckpointStore
from flaxprune.training.run_dir import RunFiles
from flaxprune.training.state_compaction import TRAIN_MODEL_KEY, train_model_config

pytestmark = pytest.mark.e2e

STEPS = 8


def config(data_dir, **overrides):
    """The tiny SRU run, compacting every 3 steps at the P(z != 0) of the gates' mean start.

    The gates start spread out (``init_std`` 1 instead of 0.01), so about half of every layer's gates start
    below the threshold, and a few steps of training do not move them across it by much: each compaction
    drops some of every layer, not all.
    """
    gate = fp.GateConfig(init_std=1.0)
    start = float(fp.prob_nonzero(np.log((1 - gate.drop_rate) / gate.drop_rate), gate))
    fields = {
        "data.data_dir": data_dir,
        "train.steps": STEPS,
        "train.checkpoint_every": 2,
        "prune.compact_every": 3,
        "prune.compact_threshold": start,
    }
    c = tiny_lm_config(**{**fields, **overrides})
    c.prune.gate = ml_collections.ConfigDict({"init_std": 1.0})
    return c


class Crash(Exception):
    pass


def crash_at(step):
    def hook(done):
        if done == step:
            raise Crash(step)

    return hook


@pytest.fixture(scope="module")
def compacted_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("compacted")
    logs = []
    summary = loop.train(config(data_dir), workdir, log=logs.append, progress=False)
    return workdir, summary, logs


def test_the_run_compacts_and_trains_on_the_smaller_model(compacted_run, data_dir):
    workdir, summary, logs = compacted_run
    assert summary["status"] == "done"
    lines = [line for line in logs if "compacted" in line]
    assert lines and lines[0].startswith("step 3: compacted ")
    rows = [json.loads(line) for line in RunFiles(workdir).metrics.read_text().splitlines()]
    compacts = [r for r in rows if r["kind"] == "compact"]
    assert compacts and compacts[0]["step"] == 3
    # The newest checkpoint is of the compacted model, and says so.
    store = CheckpointStore(RunFiles(workdir).checkpoints)
    meta = store.read_meta()
    store.close()
    compacted = train_model_config(meta)
    assert meta[TRAIN_MODEL_KEY] != meta["model_config"]
    assert compacted.plan.layers  # a spec per compacted layer
    # The sparsity is measured against the full model: the summary counts its prunable params.
    full = loop.prepare(config(data_dir), workdir.parent / "fresh")
    last_params = runs.load_run(workdir)[1]
    assert summary["prunable_params"] == full.prunable > fp.prunable_params(last_params)
    assert 0 <= summary["hard_sparsity"] <= 1
    assert summary["compacted_params"] < summary["params"]
    # The reduced model (shrunk from the compacted one) scores what the gated model scored.
    assert summary["reduced_valid_bpc"] == pytest.approx(summary["valid_bpc"], abs=1e-4)


def test_resume_across_a_compaction_is_exact(compacted_run, tmp_path, data_dir):
    reference, _, _ = compacted_run
    cfg = config(data_dir)
    # Crash at step 5: the checkpoint at step 4 holds the compacted state (compaction at 3).
    with pytest.raises(Crash):
        loop.train(cfg, tmp_path, on_step=crash_at(5), log=lambda _: None, progress=False)
    loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    chex.assert_trees_all_equal(runs.load_run(tmp_path)[1], runs.load_run(reference)[1])


def test_resume_from_before_a_compaction_is_exact(compacted_run, tmp_path, data_dir):
    reference, _, _ = compacted_run
    cfg = config(data_dir)
    with pytest.raises(Crash):  # the checkpoint at step 2 precedes the compaction at 3
        loop.train(cfg, tmp_path, on_step=crash_at(3), log=lambda _: None, progress=False)
    loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    chex.assert_trees_all_equal(runs.load_run(tmp_path)[1], runs.load_run(reference)[1])


def test_compaction_off_is_the_run_as_before(tmp_path, data_dir):
    cfg = config(data_dir, **{"prune.compact_every": 0})
    logs = []
    summary = loop.train(cfg, tmp_path, log=logs.append, progress=False)
    assert not any("compacted" in line for line in logs) and "compacted_params" not in summary
    assert jax.tree.structure(runs.load_run(tmp_path)[1]) is not None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("prune.compact_every", -1, r"config.prune.compact_every=-1 must be an integer >= 0"),
        ("prune.compact_threshold", 1.0, r"config.prune.compact_threshold=1.0 must be a number in \(0, 1\)"),
        ("prune.compact_threshold", 0.0, r"config.prune.compact_threshold=0.0 must be a number in \(0, 1\)"),
    ],
)
def test_bad_compaction_settings_are_one_line_errors(tmp_path, data_dir, field, value, message):
    with pytest.raises(ValueError, match=message):
        loop.prepare(config(data_dir, **{field: value}), tmp_path / "run")
    assert not (tmp_path / "run").exists()
