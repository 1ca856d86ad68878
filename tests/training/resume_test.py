"""Resuming a run without losing or mixing anything: crashes, changed configs, a second process, the end.

Each test trains the tiny SRU run (12 steps, checkpoints at 4, 8, 12) and
compares with one uninterrupted run of the same config.
"""

import json
import os
import signal

import chex
import pytest
from tiny_runs import tiny_lm_config

from flaxprune.training import finalize, loop, runs
from flaxprune.training.run_dir import RunFiles, RunLock, WorkdirInUseError

pytestmark = pytest.mark.e2e


class Crash(Exception):
    """Stands in for kill -9: the process stops between two steps, leaving what it wrote."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("reference")
    summary = loop.train(tiny_lm_config(**{"data.data_dir": data_dir}), workdir, log=lambda _: None, progress=False)
    return workdir, summary


def _crash_at(step):
    def hook(done):
        if done == step:
            raise Crash(step)

    return hook


def _rows(workdir):
    return [json.loads(line) for line in RunFiles(workdir).metrics.read_text().splitlines()]


def test_a_crash_then_resume_keeps_metrics_in_order_and_ends_equal(reference, tmp_path, data_dir):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    with pytest.raises(Crash):
        loop.train(cfg, tmp_path, on_step=_crash_at(7), log=lambda _: None, progress=False)  # checkpoint at 4
    assert max(r["step"] for r in _rows(tmp_path)) == 6  # rows 5, 6 will be logged again
    assert not RunFiles(tmp_path).lock.exists()  # released though the run died
    loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    rows = _rows(tmp_path)
    resume = [r for r in rows if r["kind"] == "resume"]
    assert resume == [{"step": 4, "kind": "resume", "dropped_rows": 2}]
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) == [2, 4, 6, 8, 10, 12]  # no row twice
    reference_rows = [r for r in _rows(reference[0]) if r["kind"] == "eval"]
    assert [r for r in rows if r["kind"] == "eval"] == reference_rows
    chex.assert_trees_all_equal(runs.load_run(tmp_path)[1], runs.load_run(reference[0])[1])


def test_a_changed_config_is_refused_or_recorded(tmp_path, data_dir):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    with pytest.raises(Crash):
        loop.train(cfg, tmp_path, on_step=_crash_at(5), log=lambda _: None, progress=False)
    changed = tiny_lm_config(**{"data.data_dir": data_dir, "prune.target": 0.9, "train.steps": 8})
    saved = RunFiles(tmp_path).config.read_text()
    refused = r"would change prune.target 0.5 -> 0.9, train.steps 12 -> 8\. .*--allow_config"
    with pytest.raises(ValueError, match=refused):
        loop.train(changed, tmp_path, log=lambda _: None, progress=False)
    assert RunFiles(tmp_path).config.read_text() == saved  # nothing overwritten
    logs = []
    summary = loop.train(changed, tmp_path, allow_config_change=True, log=logs.append, progress=False)
    assert summary["status"] == "done" and summary["target"] == 0.9
    (record,) = [json.loads(line) for line in RunFiles(tmp_path).config_history.read_text().splitlines()]
    assert record["step"] == 4 and record["changed"]["prune.target"] == {"old": 0.5, "new": 0.9}
    assert json.loads(RunFiles(tmp_path).config.read_text())["prune"]["target"] == 0.9
    assert any("resuming with a changed config from step 4" in line for line in logs)


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path, data_dir):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    with RunLock(tmp_path):  # the first run, still going
        with pytest.raises(WorkdirInUseError, match=f"in use by process {os.getpid()}"):
            loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the second one wrote nothing


def test_sigterm_during_the_end_of_the_run_then_rerun_finishes(reference, tmp_path, data_dir, monkeypatch):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    original = finalize.time_forward
    calls = []

    def preempted_timing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the end of the run is timing the model
        return original(*args, **kwargs)

    monkeypatch.setattr(finalize, "time_forward", preempted_timing)
    first = loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    assert first == {"status": "preempted", "step": 12}
    assert not RunFiles(tmp_path).summary.exists()
    second = loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    assert second["status"] == "done"
    for key in ("valid_bpc", "test_bpc", "hard_sparsity", "reduced_valid_bpc", "reduced_params"):
        assert second[key] == reference[1][key]


def test_bad_workdirs_are_refused_before_anything_is_written(tmp_path, data_dir):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NotADirectoryError, match=r"workdir .*file is a file"):
        loop.prepare(cfg, tmp_path / "file")
    (tmp_path / "run" / "reduced").mkdir(parents=True)
    (tmp_path / "run" / "reduced" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"reduced holds something other than this run's reduced model"):
        loop.train(cfg, tmp_path / "run", log=lambda _: None, progress=False)
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["notes.txt", "reduced"]


def test_shrink_never_writes_over_a_runs_checkpoints(reference, tmp_path):
    workdir, _ = reference
    before = sorted(p.name for p in RunFiles(workdir).checkpoints.iterdir())
    with pytest.raises(FileExistsError, match="is not a flaxprune reduced model: nothing was written"):
        runs.shrink_run(workdir, RunFiles(workdir).checkpoints)
    assert sorted(p.name for p in RunFiles(workdir).checkpoints.iterdir()) == before
    runs.shrink_run(workdir, tmp_path / "small")
    with pytest.raises(FileExistsError, match="already holds a reduced model"):
        runs.shrink_run(workdir, tmp_path / "small")
    runs.shrink_run(workdir, tmp_path / "small", overwrite=True)
