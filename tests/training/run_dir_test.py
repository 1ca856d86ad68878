"""The run directory: one run at a time (the lock), and config changes named field by field."""

import json
import os
import socket
import subprocess
import sys

import pytest

from flaxprune.training.run_dir import (
    RunFiles,
    RunLock,
    WorkdirInUseError,
    config_changes,
    format_changes,
    record_config_change,
)


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    with RunLock(tmp_path):
        holder = json.loads(RunFiles(tmp_path).lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirInUseError, match=rf"in use by process {os.getpid()} on .* \(lock file .*run.lock\)"):
            with RunLock(tmp_path):
                pass
    assert not RunFiles(tmp_path).lock.exists()  # released on exit


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with RunLock(tmp_path):
            raise RuntimeError("boom")
    assert not RunFiles(tmp_path).lock.exists()


def test_a_dead_holders_lock_is_taken_over_and_another_hosts_is_not(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # that process has ended: its lock is stale (kill -9 leaves such a file)
    lock = RunFiles(tmp_path).lock
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))
    logs = []
    with RunLock(tmp_path, logs.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert logs and f"process {pid}, which ended without releasing it" in logs[0]
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "since": "earlier"}))
    with pytest.raises(WorkdirInUseError, match="process 1 on another-host since earlier"):
        with RunLock(tmp_path):
            pass
    assert lock.exists()  # not ours to remove


def test_config_changes_name_each_field():
    old = {"train": {"steps": 2000, "seed": 0}, "prune": {"target": 0.5}, "init_from": ""}
    new = {"train": {"steps": 4000, "seed": 0}, "prune": {"target": 0.9, "basis": "dense"}, "init_from": ""}
    changes = config_changes(old, new)
    assert changes == {"prune.basis": (None, "dense"), "prune.target": (0.5, 0.9), "train.steps": (2000, 4000)}
    assert format_changes(changes) == 'prune.basis null -> "dense", prune.target 0.5 -> 0.9, train.steps 2000 -> 4000'
    assert config_changes(old, old) == {}


def test_accepted_changes_are_kept_in_the_history(tmp_path):
    record_config_change(tmp_path, 6, {"prune.target": (0.5, 0.9)})
    record_config_change(tmp_path, 9, {"train.steps": (12, 20)})
    rows = [json.loads(line) for line in RunFiles(tmp_path).config_history.read_text().splitlines()]
    assert [r["step"] for r in rows] == [6, 9]
    assert rows[0]["changed"] == {"prune.target": {"old": 0.5, "new": 0.9}}
