"""Driving the fault-injection child process: launch it, pause it at each step, kill -9 it at a planned point.

``fault_injection_child.py`` prints ``step N`` after each update and
``reduced`` before the reduced model is written, then waits for a line on
stdin; :class:`Child` reads those pauses, so a kill lands exactly where the
plan (``tests/fault_injection_test.py``) put it.
"""

import dataclasses
import json
import pathlib
import random
import subprocess
import sys
import threading
import time

from flaxprune.training.checkpoint import ORBAX_TMP

LAUNCH_TIMEOUT_S = 150  # one child process, start to exit; a hang fails the run instead of the whole session
WRITE_WAIT_S = 5.0  # how long to look for a checkpoint write's temporary directory before killing anyway
CHILD = pathlib.Path(__file__).resolve().with_name("fault_injection_child.py")


# --- The child process ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChildSetup:
    """What every child process gets: the config overrides and its environment."""

    overrides: dict
    env: dict


class Child:
    """``fault_injection_child.py`` on one run directory, paused at each ``step N`` / ``reduced`` line."""

    def __init__(self, setup: ChildSetup, workdir: pathlib.Path, stderr: pathlib.Path):
        self._stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(setup.overrides), str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env=setup.env,
        )
        self.logs: list[str] = []
        self.done = False
        self.timed_out = False
        self._watchdog = threading.Timer(LAUNCH_TIMEOUT_S, self._time_out)
        self._watchdog.start()

    def _time_out(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def next_pause(self) -> str | None:
        """The next ``step N`` or ``reduced`` line (the child waits there), or None once it exits."""
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("step ") or line == "reduced":
                return line
            if line.startswith("log "):
                self.logs.append(line[4:])
            elif line.startswith("done "):
                self.done = json.loads(line[5:])["status"] == "done"
        return None

    def go(self) -> None:
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.close()

    def run_to_end(self) -> None:
        """Lets the child run on without pauses (stdin closed) until it exits."""
        self.proc.stdin.close()
        while self.next_pause() is not None:
            pass
        self.close()

    def close(self) -> None:
        self.proc.wait()
        self._watchdog.cancel()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except (BrokenPipeError, OSError):
                pass
        self._stderr.close()

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(self._stderr_path.read_text(errors="replace").splitlines()[-lines:])


def first_step(child: Child, steps: int) -> tuple[str | None, int]:
    """The first pause and the step the run resumed from (``steps`` when there was nothing left to train)."""
    pause = child.next_pause()
    start = int(pause.split()[1]) - 1 if pause and pause.startswith("step ") else steps
    return pause, start


def wait_for(directory: pathlib.Path, prefix: str, timeout: float) -> bool:
    """Whether an entry of ``directory`` whose name starts with ``prefix`` appears within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if directory.is_dir() and any(p.name.startswith(prefix) for p in directory.iterdir()):
            return True
        time.sleep(0.0005)
    return False


def kill_at(
    child: Child, point: str, rng: random.Random, workdir: pathlib.Path, steps: int, checkpoint_every: int
) -> str | None:
    """Drives ``child`` to the kill ``point`` of the plan and kills it there; where, or None if it ended first.

    ``step``: at a random step after the one it resumed from, before that
    step's checkpoint. ``write``: during the write of a random checkpoint
    (once orbax's temporary directory for it appears, plus 0-30 ms).
    ``end``: just before the reduced model is written.
    """
    u, delay = rng.random(), rng.uniform(0.0, 0.03)  # drawn whatever happens, so the plan stays seeded
    pause, start = first_step(child, steps)
    if point == "step":
        target = f"step {start + 1 + int(u * (steps - start))}" if start < steps else None
    elif point == "write":
        due = [s for s in range(checkpoint_every, steps + 1, checkpoint_every) if s > start]
        target = f"step {due[int(u * len(due))]}" if due else None
    else:
        target = "reduced"
    while pause is not None:
        if pause == target and point != "write":
            child.kill()
            return f"at {target}" + (" (before the reduced model is written)" if target == "reduced" else "")
        if pause == target:
            step = int(target.split()[1])
            child.go()
            seen = wait_for(workdir / "checkpoints", f"{step}{ORBAX_TMP}", WRITE_WAIT_S)
            time.sleep(delay)
            child.kill()
            committed = (workdir / "checkpoints" / str(step)).is_dir()
            state = "during" if seen and not committed else "just after"
            return f"{state} the checkpoint write of step {step} (+{delay * 1e3:.0f} ms)"
        child.go()
        pause = child.next_pause()
    child.close()
    return None
