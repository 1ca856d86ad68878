"""Fault injection: kill -9 a tiny run at random points, damage its checkpoints on disk, and lose nothing.

One seeded ``random.Random`` plans every fault, so a failure reruns the same way (the children pause at
each step, so a kill lands at its planned point; only which bytes a flip hits also depends on how OCDBT
split the arrays among its files, which varies from write to write):

* **kill -9** (SIGKILL, no handler runs) of a run in a child process
  (``fault_injection_child.py``), at a step chosen at random, during a
  checkpoint write (as soon as orbax's temporary directory for it appears),
  or just before the reduced model is written; each rerun may be killed again;
* **disk damage** after a kill, to the newest checkpoint while an older one
  is left to fall back to: a few bytes flipped in an array data file (the
  OCDBT files under ``<step>/state/``), one of them truncated, or one byte of
  an array checksum flipped in ``<step>/meta/metadata``.

Each run is rerun until it finishes. What must hold: every finished run is
bitwise the uninterrupted reference (final checkpoint params, ``summary.json``'s
bits per character and hard sparsity, the ``reduced/`` params); a detected
damaged checkpoint is set aside as ``<step>.damaged`` with its bytes as the
fault left them; no run is left unable to finish. Damage in bytes orbax never
reads may go undetected, and the run must still end equal to the reference.
``fault_tally`` counts it all; ``pytest -s`` prints it.

Two targeted cases close the file: a kill during the first write of
``reduced/`` must still let the run finish, and a bit flip in a checkpoint's
JSON metadata outside the array checksums (the data position) must be
caught, never trained on.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import random
import shutil
import time

import chex
import pytest
from fault_injection_control import LAUNCH_TIMEOUT_S, WRITE_WAIT_S, Child, ChildSetup, kill_at, wait_for
from tiny_runs import tiny_lm_config

from flaxprune.training import checkpoint, loop, runs

pytestmark = pytest.mark.e2e

SEED = 20240611
STEPS, CHECKPOINT_EVERY = 30, 5
OVERRIDES = {  # 30 steps, checkpoints every 5 (keep 2), evaluations (and best/ saves) every 10
    "train.steps": STEPS,
    "train.checkpoint_every": CHECKPOINT_EVERY,
    "train.eval_every": 10,
    "prune.target_warmup": 10,
    "prune.best_tolerance": 0.5,  # every evaluation counts as "at target", so best/ is written and restored too
}
RUNS, KILLS_PER_RUN = 3, 3  # 9 kills; disk damage after 4 of them
KILL_POINTS = ["step"] * 5 + ["write"] * 3 + ["end"]  # shuffled over the 9 kills ("end" last in its run)
DISK_FAULTS = ["flip", "flip", "truncate", "meta"]


# --- What happened, and the tally ----------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    """One fault of the plan, and what became of it."""

    run: int
    kind: str  # 'kill' | 'flip' | 'truncate' | 'meta'
    where: str = ""  # what was killed or damaged, in words
    landed: bool = False  # the kill hit a live run / the damage was written
    step: int | None = None  # disk damage: the checkpoint step damaged
    digest: str = ""  # disk damage: the damaged step directory's content right after the damage
    detected: bool | None = None  # disk damage: the rerun reported the step "is damaged"
    resumed_from: int | None = None  # disk damage: the step the rerun resumed from

    def __str__(self) -> str:
        seen = {None: "", True: " -> detected, set aside", False: " -> not reported damaged"}[self.detected]
        if self.resumed_from is not None:
            seen += f", resumed from step {self.resumed_from}"
        return f"run {self.run}: {self.kind} {self.where}{'' if self.landed else ' (did not land)'}{seen}"

    def misreported(self) -> str | None:
        """What is wrong with how the rerun treated this damage: a detected step must be passed over for an
        older one, an undetected one resumed from (its arrays then passed their checksums)."""
        if self.detected is None or self.resumed_from is None:
            return None if self.detected is None else f"step {self.step}: the rerun did not say where it resumed"
        if self.detected and self.resumed_from >= self.step:
            return f"step {self.step} reported damaged, yet the rerun resumed from step {self.resumed_from}"
        if not self.detected and self.resumed_from != self.step:
            return f"step {self.step} not reported damaged, yet the rerun resumed from step {self.resumed_from}"
        return None


@dataclasses.dataclass
class RunRecord:
    """One run directory taken through its faults to the end."""

    index: int
    workdir: pathlib.Path
    faults: list[Fault] = dataclasses.field(default_factory=list)
    finished: bool = False
    difference: str | None = None  # how the finished run differs from the reference (None: bitwise equal)
    damaged_lost: list[str] = dataclasses.field(default_factory=list)  # detected damaged steps not kept intact
    misreported: list[str] = dataclasses.field(default_factory=list)  # damage the rerun handled inconsistently
    locks_taken_over: int = 0
    error: str = ""

    def describe(self) -> str:
        return "\n  ".join([f"run {self.index} ({self.workdir}):"] + [str(f) for f in self.faults])


def fault_tally(records: list[RunRecord]) -> dict[str, int]:
    """The counts the test prints and asserts: faults injected, survived, and data lost.

    A fault *survived* when its run finished bitwise equal to the reference.
    *Data lost* is a detected damaged checkpoint that was deleted or changed
    after it was set aside, or a run that could not finish.
    """
    faults = [f for r in records for f in r.faults]
    landed = [f for f in faults if f.landed]
    disk = [f for f in landed if f.kind != "kill"]
    return {
        "kills": sum(f.kind == "kill" for f in landed),
        "flips": sum(f.kind == "flip" for f in landed),
        "truncations": sum(f.kind == "truncate" for f in landed),
        "meta_flips": sum(f.kind == "meta" for f in landed),
        "injected": len(landed),
        "not_interrupted": sum(f.kind == "kill" and not f.landed for f in faults),  # the run got past first
        "damage_skipped": sum(f.kind != "kill" and not f.landed for f in faults),  # no older checkpoint to keep
        "detected": sum(bool(f.detected) for f in disk),
        "undetected": sum(f.detected is False for f in disk),
        "survived": sum(f.landed for r in records if r.finished and r.difference is None for f in r.faults),
        "differ": sum(r.finished and r.difference is not None for r in records),
        "misreported": sum(len(r.misreported) for r in records),
        "damaged_deleted": sum(len(r.damaged_lost) for r in records),
        "unfinished": sum(not r.finished for r in records),
    }


def format_tally(counts: dict[str, int]) -> str:
    return (
        f"faults injected: {counts['injected']} (kills {counts['kills']}, flips {counts['flips']}, "
        f"truncations {counts['truncations']}, meta flips {counts['meta_flips']}; not interrupted "
        f"{counts['not_interrupted']}, damage skipped {counts['damage_skipped']})\n"
        f"damage detected {counts['detected']}, undetected {counts['undetected']}, "
        f"misreported {counts['misreported']}\n"
        f"survived: {counts['survived']} of {counts['injected']} (runs that differ: {counts['differ']})\n"
        f"data lost: damaged checkpoints deleted {counts['damaged_deleted']}, "
        f"runs that could not finish {counts['unfinished']}"
    )


# --- Disk damage ---------------------------------------------------------------------------------


def _digest(directory: pathlib.Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``directory``."""
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(directory).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _step_dirs(ckpt_dir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The array data files of a step (OCDBT ``d/`` folders), largest first (their names are random, sizes not)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def _damage(fault: Fault, rng: random.Random, workdir: pathlib.Path) -> None:
    """Damages the newest checkpoint as ``fault.kind`` says, if an older one is there to fall back to."""
    u = [rng.random() for _ in range(6)]  # drawn whatever happens, so the plan stays seeded
    xors = [rng.randrange(1, 256) for _ in range(4)]
    ckpt_dir = workdir / "checkpoints"
    steps = _step_dirs(ckpt_dir)
    if len(steps) < 2:
        fault.where = f"skipped: checkpoints {steps} leave none to fall back to"
        return
    step_dir = ckpt_dir / str(steps[-1])
    if fault.kind in ("flip", "truncate"):
        files = _data_files(step_dir)[:3]
        path = files[int(u[0] * len(files))]
        data = bytearray(path.read_bytes())
        if fault.kind == "flip":
            offsets = sorted({int(x * len(data)) for x in u[1 : 3 + int(u[5] * 3)]})  # 2-4 bytes
            for offset, x in zip(offsets, xors):
                data[offset] ^= x
            what = f"flipped {len(offsets)} byte(s) at {offsets} of"
        else:
            what = f"truncated to {int(u[1] * len(data)):,} of {len(data):,} bytes"
            data = data[: int(u[1] * len(data))]
    else:
        path = step_dir / "meta" / "metadata"
        data = bytearray(path.read_bytes())
        text = data.decode()
        sums = json.loads(text)[checkpoint.CHECKSUMS_KEY]
        leaf = sorted(sums)[int(u[0] * len(sums))]
        offset = text.index(sums[leaf]) + int(u[1] * 64)  # one hex digit of that array's SHA-256
        old = chr(data[offset])
        data[offset] = ord("0123456789abcdef".replace(old, "")[int(u[2] * 15)])
        what = f"changed checksum digit {old!r} -> {chr(data[offset])!r} of {leaf} in"
    path.write_bytes(bytes(data))
    fault.where = f"{what} {path.relative_to(ckpt_dir)}"
    fault.landed, fault.step, fault.digest = True, steps[-1], _digest(step_dir)


def _check_damage_reported(fault: Fault, logs: list[str]) -> None:
    """Whether the rerun after ``fault`` said its step is damaged (else it restored it: unread bytes), and
    which step it resumed from."""
    fault.detected = any(f"checkpoint step {fault.step} in" in line and "is damaged" in line for line in logs)
    resumed = [int(line.split()[3]) for line in logs if line.startswith("resumed from step ")]
    fault.resumed_from = resumed[0] if resumed else None


def _check_damage(record: RunRecord) -> None:
    """Each detected damaged step must still lie in ``<step>.damaged*`` exactly as the fault left it, and
    each rerun must have resumed where its report says (:meth:`Fault.misreported`)."""
    ckpt_dir = record.workdir / "checkpoints"
    record.misreported = [m for m in (f.misreported() for f in record.faults) if m]
    for fault in record.faults:
        if not fault.detected:
            continue
        kept = [_digest(p) for p in ckpt_dir.glob(f"{fault.step}.damaged*") if p.is_dir()]
        if fault.digest not in kept:
            record.damaged_lost.append(f"step {fault.step}: no {fault.step}.damaged* holds the damaged bytes")


# --- Comparing with the reference ----------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """What a finished run must reproduce bitwise."""

    params: object
    step: int
    reduced: object
    summary: dict


SUMMARY_KEYS = ("valid_bpc", "test_bpc", "hard_sparsity", "reduced_valid_bpc", "reduced_test_bpc", "reduced_params")


def _result(workdir: pathlib.Path) -> Result:
    _, params, _, step = runs.load_run(workdir)
    _, reduced, _ = checkpoint.load_reduced(workdir / "reduced")
    summary = json.loads((workdir / "summary.json").read_text())
    return Result(params, step, reduced, {k: summary[k] for k in SUMMARY_KEYS})


def _difference(got: Result, want: Result) -> str | None:
    """None when ``got`` is bitwise ``want``; else what differs."""
    problems = []
    if got.step != want.step:
        problems.append(f"final checkpoint step {got.step} != {want.step}")
    if got.summary != want.summary:
        problems.append(f"summary {got.summary} != {want.summary}")
    for name, a, b in (("params", got.params, want.params), ("reduced params", got.reduced, want.reduced)):
        try:
            chex.assert_trees_all_equal(a, b)
        except (AssertionError, ValueError) as e:
            problems.append(f"{name}: {str(e)[:300]}")
    return "; ".join(problems) or None


# --- The runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overrides(tmp_path_factory):
    return {**OVERRIDES, "data.data_dir": str(tmp_path_factory.mktemp("tfds"))}


@pytest.fixture(scope="module")
def child_setup(tmp_path_factory, overrides):
    """The children share a persistent compilation cache: only the first compiles (most of a launch's
    time); the reference, compiled afresh in this process, checks that cached code computes the same bits."""
    cache = tmp_path_factory.mktemp("jax_cache")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return ChildSetup(overrides, env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, overrides):
    """The uninterrupted run (in this process) and what it ended with."""
    workdir = tmp_path_factory.mktemp("reference")
    summary = loop.train(tiny_lm_config(**overrides), workdir, progress=False, log=lambda _: None)
    assert summary["status"] == "done" and summary["step"] == STEPS
    return workdir, _result(workdir)


def _plan(rng: random.Random) -> list[list[tuple[str, str | None, random.Random]]]:
    """Per run, its kills: (kill point, disk fault after it or None, the kill's own seeded RNG)."""
    points = KILL_POINTS[:]
    rng.shuffle(points)
    disk = DISK_FAULTS + [None] * (len(points) - len(DISK_FAULTS))
    rng.shuffle(disk)
    plan = []
    for r in range(RUNS):
        kills = list(zip(points[r * KILLS_PER_RUN : (r + 1) * KILLS_PER_RUN], disk[r * KILLS_PER_RUN :]))
        kills.sort(key=lambda k: k[0] == "end")  # killed before its reduced model, a run has no steps left
        plan.append([(point, damage, random.Random(rng.getrandbits(64))) for point, damage in kills])
    return plan


def _launch(record: RunRecord, setup: ChildSetup, name: str) -> Child:
    return Child(setup, record.workdir, record.workdir.parent / f"{record.workdir.name}.{name}.stderr")


def _after_launch(record: RunRecord, child: Child, pending: list[Fault]) -> None:
    """Books what a launch's log says: a stale lock taken over, damage detected."""
    record.locks_taken_over += any("taking over the lock" in line for line in child.logs)
    for fault in pending:
        _check_damage_reported(fault, child.logs)
    pending.clear()


def _fault_run(record: RunRecord, setup: ChildSetup, kills: list, reference: Result) -> None:
    """Takes one run directory through its planned kills (and damage), then reruns it until it finishes."""
    try:
        _drive(record, setup, kills)
        if record.finished:
            record.difference = _difference(_result(record.workdir), reference)
    finally:
        _check_damage(record)  # finished or not, nothing set aside may be lost


def _drive(record: RunRecord, setup: ChildSetup, kills: list) -> None:
    """The launches of one run: each killed as planned (then maybe damaged), and a last one to the end."""
    pending: list[Fault] = []  # damage the next launch should report
    for i, (point, damage, rng) in enumerate(kills):
        fault = Fault(record.index, "kill")
        record.faults.append(fault)
        child = _launch(record, setup, f"kill{i}")
        where = kill_at(child, point, rng, record.workdir, STEPS, CHECKPOINT_EVERY)
        _after_launch(record, child, pending)
        if child.timed_out:
            record.error = f"launch {i} hung; killed after {LAUNCH_TIMEOUT_S} s\n{child.stderr_tail()}"
            return
        if where is None:
            fault.where = f"planned {point}: the run ended first"
            if child.done:
                break
            record.error = f"launch {i} exited with {child.proc.returncode}\n{child.stderr_tail()}"
            return
        fault.where, fault.landed = where, True
        if damage is not None:
            disk_fault = Fault(record.index, damage)
            record.faults.append(disk_fault)
            _damage(disk_fault, rng, record.workdir)
            if disk_fault.landed:
                pending.append(disk_fault)
    else:
        child = _launch(record, setup, "final")
        child.run_to_end()
        _after_launch(record, child, pending)
        if not child.done:
            how = f"exited with {child.proc.returncode}"
            how = f"hung; killed after {LAUNCH_TIMEOUT_S} s" if child.timed_out else how
            record.error = f"the final rerun {how}\n{child.stderr_tail()}"
            return
    record.finished = True


def test_kills_and_damage_lose_nothing(reference, child_setup, tmp_path):
    """Kill -9 and damaged checkpoints, seeded: every run ends bitwise equal to the uninterrupted one."""
    t0 = time.perf_counter()
    _, want = reference
    plan = _plan(random.Random(SEED))
    records = [RunRecord(index, tmp_path / f"run{index}") for index in range(RUNS)]
    for record in records:
        _fault_run(record, child_setup, plan[record.index], want)
    for record in records:
        print(record.describe() + ("" if record.finished else f"\n  NOT FINISHED: {record.error}"))
    counts = fault_tally(records)
    print(format_tally(counts) + f"\n({time.perf_counter() - t0:.0f} s, seed {SEED})")

    failed = "\n".join(r.describe() + f"\n  -> {r.error or r.difference}" for r in records if r.error or r.difference)
    assert counts["unfinished"] == 0, f"runs that could not finish:\n{failed}"
    assert counts["differ"] == 0, f"runs that finished different from the reference:\n{failed}"
    lost = "\n".join(f"{r.describe()}\n  -> {r.damaged_lost}" for r in records if r.damaged_lost)
    assert counts["damaged_deleted"] == 0, f"damaged checkpoints not kept as they were:\n{lost}"
    wrong = "\n".join(f"{r.describe()}\n  -> {r.misreported}" for r in records if r.misreported)
    assert counts["misreported"] == 0, f"damage handled inconsistently:\n{wrong}"
    assert counts["survived"] == counts["injected"]
    assert counts["kills"] >= 6 and counts["flips"] + counts["truncations"] + counts["meta_flips"] >= 2, counts
    kills_before_rerun = counts["kills"]  # every landed kill left its lock, and the next launch took it over
    assert sum(r.locks_taken_over for r in records) == kills_before_rerun, [r.locks_taken_over for r in records]


# --- Known gaps, pinned (strict: each turns into a failure once fixed, to drop its marker) ---------------


def _copy_run(reference_dir: pathlib.Path, workdir: pathlib.Path, *left_out: str) -> None:
    """The reference run directory without ``left_out`` (relative paths): a state a kill can leave."""
    shutil.copytree(reference_dir, workdir)
    for rel in left_out:
        path = workdir / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_kill_while_writing_the_reduced_model_then_resume(reference, overrides, child_setup, tmp_path):
    ref_dir, want = reference
    workdir = tmp_path / "run"
    _copy_run(ref_dir, workdir, "reduced", "summary.json")  # killed after its last checkpoint
    child = Child(child_setup, workdir, tmp_path / "child.stderr")
    assert child.next_pause() == "reduced", child.stderr_tail()  # nothing left to train
    child.go()
    seen = wait_for(workdir / "reduced", f"0{checkpoint.ORBAX_TMP}", WRITE_WAIT_S)
    child.kill()
    if not seen or (workdir / "reduced" / checkpoint.REDUCED_MARKER).exists():
        pytest.skip("the kill missed the write of reduced/")
    loop.train(tiny_lm_config(**overrides), workdir, progress=False, log=lambda _: None)
    assert _difference(_result(workdir), want) is None


def test_bit_flip_in_the_data_position_is_not_trained_on(reference, overrides, tmp_path):
    ref_dir, want = reference
    workdir = tmp_path / "run"
    _copy_run(ref_dir, workdir, "reduced", "summary.json", "checkpoints/30")  # killed at step 29
    meta = workdir / "checkpoints" / "25" / "meta" / "metadata"
    data = bytearray(meta.read_bytes())
    at = data.index(b'"segment": 25') + len(b'"segment": 2')
    data[at] ^= 1  # one bit: '5' -> '4', so the data resumes one segment early
    meta.write_bytes(bytes(data))
    logs = []
    try:
        loop.train(tiny_lm_config(**overrides), workdir, progress=False, log=logs.append)
    except checkpoint.DamagedCheckpointError:
        return  # refused, naming the damage: fine (step 25 is the only checkpoint left)
    reported = any("is damaged" in line for line in logs)
    assert reported or _difference(_result(workdir), want) is None, "the flipped data position was trained on"
