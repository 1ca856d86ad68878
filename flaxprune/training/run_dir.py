"""A run directory: its files, the lock that keeps it to one run, and the record of config changes.

A run directory (``--workdir``) holds::

    config.json            the experiment config of the run
    config_history.jsonl   each accepted change of config on a resume (allow_config_change)
    metrics.jsonl          one JSON object per logged step (train and eval; a resume marks itself)
    checkpoints/           keep-N training states (state pytree + JSON meta: the model config,
                           the data position, the best score, the arrays' checksums)
    best/                  the best state so far (FLOP's rule, see the loop)
    reduced/               the shrunk model: params + its model config as JSON
    summary.json           the end-of-run summary
    run.lock               while a run is going: which process holds the directory

:class:`RunFiles` names these paths (nothing else spells them out);
:class:`RunLock` refuses a second run on the same directory;
:func:`config_changes` names what a resume would change.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import socket
from collections.abc import Mapping
from typing import Any

__all__ = [
    "RunFiles",
    "RunLock",
    "WorkdirInUseError",
    "config_changes",
    "format_changes",
    "record_config_change",
]


class RunFiles:
    """The paths inside one run directory (nothing is created)."""

    def __init__(self, workdir: str | pathlib.Path):
        self.workdir = pathlib.Path(workdir).absolute()

    @property
    def config(self) -> pathlib.Path:
        return self.workdir / "config.json"

    @property
    def metrics(self) -> pathlib.Path:
        return self.workdir / "metrics.jsonl"

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.workdir / "checkpoints"

    @property
    def best(self) -> pathlib.Path:
        return self.workdir / "best"

    @property
    def reduced(self) -> pathlib.Path:
        return self.workdir / "reduced"

    @property
    def summary(self) -> pathlib.Path:
        return self.workdir / "summary.json"

    @property
    def lock(self) -> pathlib.Path:
        return self.workdir / "run.lock"

    @property
    def config_history(self) -> pathlib.Path:
        return self.workdir / "config_history.jsonl"


class WorkdirInUseError(OSError):
    """Another live process holds the run directory's lock (the directory is busy, as EBUSY says of a device)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory, held for the whole run (``with RunLock(workdir): ...``).

    The lock file (``run.lock``) is created atomically and names its holder
    (pid, host, start time). A second run is refused with that name. A lock
    left by a process that died (kill -9) on this host is taken over, and
    said so; one from another host cannot be checked, so it is refused with
    the file to delete once that run is known to be gone. Released on exit,
    whatever the exit.
    """

    def __init__(self, workdir: str | pathlib.Path, log: Any = print):
        self.path = RunFiles(workdir).lock
        self._log = log
        self._held = False

    def __enter__(self) -> RunLock:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(holder, f)
            self._held = True
            return self
        raise WorkdirInUseError(f"could not take the lock {self.path}; another run keeps taking it.")

    def _clear_stale(self) -> None:
        try:
            other = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(other["pid"]), str(other["host"])
        except (OSError, ValueError, KeyError, TypeError):
            other, pid, host = {}, None, None
        if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
            self._log(f"taking over the lock {self.path} of process {pid}, which ended without releasing it.")
            self.path.unlink(missing_ok=True)
            return
        holder = f"process {pid} on {host} since {other.get('since', '?')}" if pid is not None else "an unreadable lock"
        raise WorkdirInUseError(
            f"{self.path.parent} is in use by {holder} (lock file {self.path}); wait for that run to end or use "
            "another --workdir. If that run is known to be gone, delete the lock file and rerun."
        )

    def __exit__(self, *exc: Any) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{'section.field': (old, new)}`` for every field that differs between two configs (as JSON dicts)."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    changed = {}
    for key in sorted(set(a) | set(b)):
        before, after = a.get(key, missing), b.get(key, missing)
        if before != after:
            changed[key] = (None if before is missing else before, None if after is missing else after)
    return changed


def format_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """``train.steps 2000 -> 4000, prune.target 0.5 -> 0.9``."""
    return ", ".join(f"{k} {json.dumps(v[0])} -> {json.dumps(v[1])}" for k, v in changes.items())


def record_config_change(workdir: str | pathlib.Path, step: int, changes: Mapping[str, tuple[Any, Any]]) -> None:
    """Appends an accepted config change to ``config_history.jsonl``: the step it applies from and each field."""
    record = {
        "step": int(step),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "changed": {k: {"old": v[0], "new": v[1]} for k, v in changes.items()},
    }
    with RunFiles(workdir).config_history.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
