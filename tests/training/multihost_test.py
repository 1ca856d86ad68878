"""Multi-host, proven on one machine: 2 processes x 4 CPU devices train the tiny SRU as 1 process x 8 does.

Each host is ``tests/multihost_child.py`` in its own process, joined by
``sharding.initialize_distributed`` from ``JAX_COORDINATOR_ADDRESS`` (a free
localhost port), ``JAX_NUM_PROCESSES=2`` and ``JAX_PROCESS_ID``, with gloo CPU
collectives, training through the real ``loop.train``. The run proves that:

* each host reads its own rows (0-3, 4-7) and ``put_batch`` assembles the
  one-process global batch (checked in the child);
* a SIGTERM to one host stops both after the same step, which is saved once
  (one checkpoint per step, each host's shards in it, one meta);
* a second invocation resumes on both hosts from that step, leaves the saved
  step untouched, and finishes with the params, the logged metrics and the
  summary of one process on 8 devices (to 1e-5); then both hosts write the
  reduced model again over itself, as the rerun of an interrupted end does
  (checked in the child).

Skipped where localhost sockets are not allowed. About 2-3 minutes on 2 cores.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from flaxprune.training import sharding

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHILD = ROOT / "tests" / "multihost_child.py"
STEPS, CHECKPOINT_EVERY, SIGTERM_AT = 10, 4, 5  # the SIGTERM step comes after a regular checkpoint
OVERRIDES = {
    "train.steps": STEPS,
    "train.batch_size": 8,  # 4 rows per host, 1 per device
    "train.eval_batch_size": 8,
    "train.log_every": 1,  # every step's loss is compared
    "train.eval_every": 5,
    "train.checkpoint_every": CHECKPOINT_EVERY,
    "train.keep_checkpoints": 10,  # keep every step, so the saved SIGTERM step can be checked after the resume
}
TIMEOUT_S = 400
NOT_COMPARED = ("examples_per_s", "seconds_per_batch", "reduced_seconds_per_batch", "speedup", "train_sequences_per_s")
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def free_port() -> int:
    """A free localhost port; skips the test (one line) where localhost sockets are not allowed."""
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError as e:
        pytest.skip(f"localhost sockets are not allowed here: {e}")
    return port


def child_env(devices: int, cache: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(
        # Optimization level 0 compiles ~25% faster; every run here uses it, so they compare like with like.
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),  # the resumed run reuses the first run's compiled steps
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        **extra,
    )
    return env


def launch(args: list[str], env: dict[str, str], log: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, str(CHILD), *args], env=env, stdout=out, stderr=subprocess.STDOUT), log


def wait_all(children: list[tuple[subprocess.Popen, pathlib.Path]]) -> list[dict]:
    """Every child's ``RESULT``; once one fails (or time runs out) the others are killed, not left waiting."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p, _ in children):
        failed = any(p.returncode not in (None, 0) for p, _ in children)
        if failed or time.monotonic() > deadline:
            time.sleep(0 if not failed else 5)  # let a failing peer's own error reach its log first
            for p, _ in children:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            break
        time.sleep(0.2)
    results = []
    for p, log in children:
        text = log.read_text()
        assert p.returncode == 0, f"{log.name} exited {p.returncode}:\n{text[-3000:]}"
        results.append(json.loads(text.split("RESULT ", 1)[1].splitlines()[0]))
    return results


def launch_hosts(tmp: pathlib.Path, name: str, workdir: pathlib.Path, sigterm_at: int = 0) -> list:
    port = free_port()
    args = ["host", json.dumps({**OVERRIDES, "data.data_dir": str(tmp / "tfds")}), str(workdir)]
    children = []
    for i in range(2):
        env = child_env(4, tmp / "jax_cache", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                        JAX_PROCESS_ID=str(i))
        children.append(launch([*args, str(tmp / f"{name}.npz"), str(sigterm_at)], env, tmp / f"{name}_host{i}.log"))
    return children


def wait_for_line(child: tuple[subprocess.Popen, pathlib.Path], line: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while line not in child[1].read_text():
        if child[0].poll() is not None or time.monotonic() > deadline:
            wait_all([child])  # fails the test with the child's log
            raise AssertionError(f"{child[1].name}: no {line!r}")
        time.sleep(0.2)


def steps_on_disk(workdir: pathlib.Path) -> list[int]:
    names = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert not [n for n in names if "tmp" in n], names  # no half-written step left behind
    return sorted(int(n) for n in names)


def check_written_once(step_dir: pathlib.Path, step: int) -> dict[str, tuple[int, int]]:
    """One checkpoint of ``step``: both hosts' shards in one state, one meta at that data position.

    Returns every file's (mtime_ns, size), to check later that nothing rewrote it."""
    state = step_dir / "state"
    assert sorted(p.name for p in state.glob("ocdbt.process_*")) == ["ocdbt.process_0", "ocdbt.process_1"]
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    assert meta["data"]["segment"] == step and meta["data"]["epoch"] == 0, meta["data"]
    return {str(p.relative_to(step_dir)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(step_dir.rglob("*")) if p.is_file()}


def metric_rows(workdir: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] != "resume"]


def assert_close(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), (what, set(got) ^ set(want))
    for k, v in want.items():
        if k in NOT_COMPARED or isinstance(v, (str, bool)) or v is None:
            continue
        assert abs(got[k] - v) <= 1e-5, f"{what} {k}: {got[k]} != {v}"


@pytest.mark.parametrize(
    "env, match",
    [
        ({"JAX_NUM_PROCESSES": "2"}, "need all three"),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "need all three"),
        ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "integer"),
    ],
)
def test_explicit_settings_are_checked_before_joining(monkeypatch, env, match):
    for name in DISTRIBUTED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        sharding.initialize_distributed()


@pytest.mark.e2e
@pytest.mark.multihost
def test_two_hosts_train_stop_and_resume_as_one(tmp_path):
    free_port()  # skip at once where localhost sockets are not allowed
    start = time.monotonic()

    # --- One process on 8 devices, the reference, beside two hosts that SIGTERM stops: to host 1 only, after
    # step SIGTERM_AT. The reference prepares the data that the hosts read; they start once it is there.
    ref_dir, workdir = tmp_path / "one_process", tmp_path / "two_hosts"
    overrides = json.dumps({**OVERRIDES, "data.data_dir": str(tmp_path / "tfds")})
    ref_child = launch(["reference", overrides, str(ref_dir), str(tmp_path / "reference.npz")],
                       child_env(8, tmp_path / "jax_cache"), tmp_path / "reference.log")
    wait_for_line(ref_child, "DATA READY")
    ref, *first = wait_all([ref_child, *launch_hosts(tmp_path, "preempted", workdir, sigterm_at=SIGTERM_AT)])
    assert ref["status"] == "done" and ref["step"] == STEPS

    # --- The two hosts stopped after the same step, and saved it once.
    assert [r["rows"] for r in first] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # disjoint, together the global batch
    assert [r["status"] for r in first] == ["preempted", "preempted"], first
    stop = first[0]["step"]
    assert first[1]["step"] == stop and SIGTERM_AT <= stop < STEPS, first  # on_step(SIGTERM_AT) precedes its check
    for r in first:
        assert any(line.startswith(f"SIGTERM: saved step {stop} ") for line in r["logs"]), r["logs"]
    regular = [s for s in range(CHECKPOINT_EVERY, stop + 1, CHECKPOINT_EVERY)]
    assert steps_on_disk(workdir) == sorted({*regular, stop})
    saved = check_written_once(workdir / "checkpoints" / str(stop), stop)

    # --- The same command again: both hosts resume from that step and finish.
    second = wait_all(launch_hosts(tmp_path, "resumed", workdir))
    assert [(r["status"], r["step"]) for r in second] == [("done", STEPS)] * 2, second
    for r in second:
        assert r["logs"][0] == f"resumed from step {stop} in {workdir / 'checkpoints'}", r["logs"][:2]
    assert check_written_once(workdir / "checkpoints" / str(stop), stop) == saved  # restored, never rewritten
    regular = [s for s in range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY)]
    assert steps_on_disk(workdir) == sorted({*regular, stop, STEPS})

    # --- As one process on 8 devices: the final params, every logged metric, the summary.
    want, got = np.load(tmp_path / "reference.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(got.files) == sorted(want.files) and int(got["step"]) == STEPS
    diff = max(float(np.max(np.abs(got[k] - want[k]))) for k in want.files)
    assert diff <= 1e-5, diff
    ref_rows, rows = metric_rows(ref_dir), metric_rows(workdir)
    assert [(r["step"], r["kind"]) for r in rows] == [(r["step"], r["kind"]) for r in ref_rows]  # each once
    for r, w in zip(rows, ref_rows):
        assert_close(r, w, f"metrics.jsonl step {w['step']} {w['kind']}")
    summary = json.loads((workdir / "summary.json").read_text())
    assert_close(summary, json.loads((ref_dir / "summary.json").read_text()), "summary.json")
    print(f"multihost: stopped both hosts at step {stop}; max param diff {diff:.2e}; "
          f"{time.monotonic() - start:.0f} s")
