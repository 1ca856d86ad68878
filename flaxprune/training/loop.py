"""The training loop: FLOP on any task (language model, GLUE), data parallel, resumable, preemptible.

``train(config, workdir)`` validates everything (config, data, model, an
existing checkpoint's model config, device divisibility) before it writes
anything; then trains with the combined optimizer, evaluates with
deterministic masks, keeps keep-N atomic checkpoints (state, data position,
PRNG key, carried hidden state) and the best one (only while the hard sparsity
is within ``prune.best_tolerance`` of the target; FLOP's rule was one-sided), saves and
exits cleanly on SIGTERM, and stops on a non-finite loss with the last good
checkpoint intact. At the end it shrinks the model and writes a summary
(:mod:`flaxprune.training.finalize`). What a run is before it writes
anything, and its checks, are in :mod:`flaxprune.training.run_setup`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from flaxprune.lagrangian import ramp_progress
from flaxprune.serialization import config_to_json
from flaxprune.size import expected_sparsity, prunable_params, report
from flaxprune.spectral import spectral_gates
from flaxprune.training import sharding
from flaxprune.training.checkpoint import CheckpointStore, DamagedCheckpointError
from flaxprune.training.config import compaction_settings, prune_constraint
from flaxprune.training.distill import teacher_meta
from flaxprune.training.init_from import load_initial_params
from flaxprune.training.metrics import MetricsWriter, to_python
from flaxprune.training.preemption import Preemption, Throughput, preemption_flag
from flaxprune.training.prune_method import reference_measure
from flaxprune.training.run_dir import RunFiles, RunLock, format_changes, record_config_change
from flaxprune.training.run_plots import plot_run
from flaxprune.training.run_setup import NonFiniteLossError, Run, prepare
from flaxprune.training.state import TrainState, initial_state_fn
from flaxprune.training.state_compaction import (
    TRAIN_MODEL_KEY,
    compact_state,
    describe,
    state_target,
    target_for_meta,
    task_for,
    train_model_config,
)
from flaxprune.training.steps import make_train_step

__all__ = ["NonFiniteLossError", "Run", "prepare", "run_train_step", "train"]


class _Checkpoints:
    """The run's two stores (keep-N ``checkpoints/`` and ``best/``) and what every save records beside the state."""

    def __init__(self, run: Run, batcher: Any):
        files = RunFiles(run.workdir)
        self.latest = CheckpointStore(files.checkpoints, run.config.train.keep_checkpoints)
        self.best = CheckpointStore(files.best, 1)
        self._model_json, self._batcher = run.model_json, batcher
        self._teacher = teacher_meta(run.teacher)  # a distilling run's teacher, checked on a resume
        self.train_model_json = config_to_json(run.model_config)  # the compacted model's, once compacted
        self.best_score = float("-inf")  # kept as "higher is better"

    def save(self, store: CheckpointStore, state: TrainState) -> None:
        """Saves ``state``; refuses (NonFiniteLossError) a state whose loss went non-finite."""
        if not bool(state.finite):
            raise self.non_finite(int(state.step), "nothing was saved, and ")
        meta = {"model_config": self._model_json, "data": self._batcher.state(), "best_score": self.best_score}
        meta.update(self._teacher)
        meta[TRAIN_MODEL_KEY] = self.train_model_json
        store.save(int(state.step), state, meta)

    def non_finite(self, step: int, what: str = "", loss: Any = None) -> NonFiniteLossError:
        at = f"at or before step {step}" + ("" if loss is None else f" (loss={loss})")
        return NonFiniteLossError(
            f"the loss became non-finite {at}; {what}the last good checkpoint (step {self.latest.latest_step()}) in "
            f"{self.latest.directory} is intact. Lower config.optim.learning_rate or config.optim.clip_norm, "
            "then resume."
        )

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _warm_start(run: Run, fresh: Any) -> tuple[Any | None, str]:
    """Params to start from instead of ``fresh`` (pretrained, an earlier run, gates from the spectrum), or None."""
    cfg = run.config
    params, source = run.task.initial_params(fresh), "the task's pretrained weights"
    if cfg.get("init_from"):
        params, source = load_initial_params(cfg.init_from, fresh), cfg.init_from
    if run.gated and cfg.prune.get("gate_init", "constant") == "spectral":
        if params is None:
            raise ValueError(
                "config.prune.gate_init='spectral' sets each gate from its singular value, which needs a warm "
                "start: a task with pretrained weights (BERT) or config.init_from; use gate_init='constant'."
            )
        params = spectral_gates(jax.device_get(params), *cfg.prune.gate_range)
        source += f", gates from the spectrum in {tuple(cfg.prune.gate_range)}"
    return params, source


def _resume_or_start(
    run: Run,
    ckpts: _Checkpoints,
    batcher: Any,
    create: Callable[[], TrainState],
    log: Callable[[str], None],
) -> tuple[TrainState, Any]:
    """``(state, task)``: the newest checkpoint's state (the batcher and best score restored with it) and
    the task of the model it is of (a compacted one's, after a compaction), or a fresh (warm) start.
    """
    restored = ckpts.latest.restore_intact(target_for_meta(run.task, run.tx, run.config, run.mesh), log)
    if restored is not None:
        state, meta = restored
        batcher.restore(meta["data"])
        ckpts.best_score = meta.get("best_score", ckpts.best_score)
        log(f"resumed from step {int(state.step)} in {ckpts.latest.directory}")
        return state, task_for(run.task, train_model_config(meta))
    target = state_target(run.task, run.tx, run.config, run.mesh)
    state = jax.jit(create, out_shardings=jax.tree.map(lambda a: a.sharding, target))()
    params, source = _warm_start(run, state.params)
    if params is None:
        return state, run.task
    params = jax.device_put(params, jax.tree.map(lambda _: sharding.replicated(run.mesh), params))
    log(f"initialised from {source}")
    return state.replace(trainable={**state.trainable, "params": params}), run.task


def run_train_step(run: Run) -> Callable:
    """The run's train step (not jitted): its task, optimizer, Lagrangian or AGP measure, and sparsity reference."""
    measure = reference_measure(run.model_config) if run.prune and not run.gated else None
    return make_train_step(
        run.task,
        run.tx,
        prune=run.gated,
        measure=None if measure is None else measure[0],
        target_fn=run.target_fn,
        gate=run.model_config.plan.gate,
        basis=run.basis,
        learning_rate_fn=run.lr_fn,
        reference=run.prunable,
        constraint=prune_constraint(run.config),
        hard_weight_fn=ramp_progress(int(run.config.prune.target_warmup)) if run.gated else None,
    )


def _compile_step(run: Run, state_sh: TrainState) -> tuple[Callable, Callable[[dict], dict]]:
    """The jitted, state-donating train step and the function that puts a host batch on the mesh."""
    step_fn = run_train_step(run)
    repl = sharding.replicated(run.mesh)
    spec = run.task.batch_spec()
    batch_sh = {k: sharding.batch_sharding(run.mesh) if split else repl for k, split in spec.items()}
    teacher = () if run.teacher is None else (run.teacher.params,)  # a distilling step's argument, not its constants
    in_sh = (state_sh, batch_sh, *(jax.tree.map(lambda _: repl, t) for t in teacher))  # the teacher replicated
    jitted = jax.jit(step_fn, in_shardings=in_sh, out_shardings=(state_sh, repl), donate_argnums=0)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return jitted(state, batch, *teacher)

    def to_device(host: dict) -> dict:
        return {k: sharding.put_batch(v, run.mesh) if spec[k] else np.asarray(v) for k, v in host.items()}

    return train_step, to_device


def _evaluate(run: Run, state: TrainState, done: int) -> dict[str, float]:
    """The task's valid metrics with deterministic masks, plus hard and expected sparsity and the target."""
    ev = run.task.evaluate(state.params, "valid")
    if run.prune:
        gate = run.model_config.plan.gate
        ev["hard_sparsity"] = run.hard_sparsity(state.params)
        if run.gated:
            ev["expected_sparsity"] = float(expected_sparsity(state.params, gate, run.basis, reference=run.prunable))
        else:  # AGP: the masks are the weights' zeros, nothing is expected
            ev["expected_sparsity"] = ev["hard_sparsity"]
        ev["target"] = float(run.target_fn(done))
        reference = run.reference_sparsity(state.params)
        if reference is not None:
            ev["reference_sparsity"] = reference
    return ev


def _eval_line(run: Run, done: int, ev: dict[str, float], metrics: dict[str, Any], rate: float) -> str:
    task = run.task
    train_part = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in metrics if k in ("loss", "bpc", "accuracy"))
    line = (
        f"step {done}: {task.score_name}{' (eval mask)' if run.prune else ''} {ev[task.score_name]:.4f} | "
        f"train{' (sampled gates)' if run.prune else ''} {train_part}"
    )
    if run.prune:
        line += (
            f" | sparsity hard {ev['hard_sparsity']:.3f} expected {ev['expected_sparsity']:.3f} "
            f"target {ev['target']:.3f} | lambda {float(metrics['lambda_1']):+.3f} {float(metrics['lambda_2']):+.3f}"
        )
    return line + f" | {rate:,.1f} sequences/s"


def _log_train(
    writer: MetricsWriter, bar: Any, ckpts: _Checkpoints, state: TrainState, metrics: Any, done: int, rate: float
) -> None:
    """Writes the step's train metrics; stops the run (NonFiniteLossError) once the loss went non-finite."""
    m = {**to_python(metrics), "examples_per_s": rate}
    writer.write(done, "train", m)
    if not bool(state.finite):
        bar.close()
        raise ckpts.non_finite(done, loss=m["loss"])
    bar.set_postfix(loss=f"{m['loss']:.3f}", s=f"{m['expected_sparsity']:.3f}", t=f"{m['target']:.3f}")


def _keep_if_best(run: Run, ckpts: _Checkpoints, state: TrainState, ev: dict[str, float]) -> None:
    """Saves ``state`` to ``best/`` when it scores best so far, and only at a hard sparsity within
    ``prune.best_tolerance`` of the target: FLOP's rule (at least the target less the tolerance) kept
    checkpoints past it, so a model could finish sparser than asked (MRPC: 0.514 for 0.5 at 0.02)."""
    at_target = not run.prune or abs(ev["hard_sparsity"] - run.config.prune.target) <= run.config.prune.best_tolerance
    score = (1.0 if run.task.higher_is_better else -1.0) * ev[run.task.score_name]
    if at_target and score > ckpts.best_score:
        ckpts.best_score = score
        ckpts.save(ckpts.best, state)


def _final_params(run: Run, ckpts: _Checkpoints, state: TrainState, log: Callable) -> tuple[Any, str, Any]:
    """``(params, source, task)``: the best checkpoint's params when there is an intact one, else the last
    state's, with the task of the model they are of."""
    try:
        restored = ckpts.best.restore_intact(target_for_meta(run.task, run.tx, run.config, run.mesh), log)
    except DamagedCheckpointError as e:
        log(f"{e}; finishing with the last state instead.")
        restored = None
    if restored is None:
        return state.params, "last", run.task
    best_state, meta = restored
    return best_state.params, f"best (step {int(best_state.step)})", task_for(run.task, train_model_config(meta))


def _with_task(run: Run, ckpts: _Checkpoints, task: Any) -> Run:
    """``run`` training ``task``'s model (a compacted one), which its checkpoints then record."""
    ckpts.train_model_json = config_to_json(task.model_config)
    return dataclasses.replace(run, task=task)


def _due(done: int, every: int, total: int) -> bool:
    return done % every == 0 or done == total


def train(
    config: Any,
    workdir: str | pathlib.Path,
    *,
    allow_config_change: bool = False,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) a run; returns its summary (``status`` says how it ended).

    Args:
      config: the experiment ConfigDict (``experiments/configs/*.py``).
      workdir: where checkpoints, metrics and the reduced model go; one run
        at a time (a second is refused while the first holds its lock).
      allow_config_change: resume even though ``config`` differs from the
        run's saved config outside the model (recorded in the run's config history).
      on_step: called with the step number after each update (tests use it
        to interrupt a run).
      log: where to print progress lines.
      progress: show a tqdm progress bar.

    Returns:
      ``{'status': 'done' | 'preempted', ...}``; when done, the final summary.

    Raises:
      WorkdirInUseError: another live run holds ``workdir``.
      DamagedCheckpointError: every checkpoint in ``workdir`` is damaged (each is kept).
      NonFiniteLossError: the loss went non-finite (the last good checkpoint is kept).
    """
    run = prepare(config, workdir, allow_config_change=allow_config_change)  # checks everything, writes nothing
    files = RunFiles(workdir)
    files.workdir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(files.workdir, log) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, preemption_flag() as flag:
        return _train_in(run, files, flag, on_step, log, progress)


def _train_in(
    run: Run, files: RunFiles, flag: Preemption, on_step: Callable | None, log: Callable, progress: bool
) -> dict[str, Any]:
    """The run itself, in its locked directory with the SIGTERM flag set up."""
    from flaxprune.training.finalize import finalize  # the end of a run: shrink, save, evaluate, time

    cfg, task = run.config, run.task

    # --- The state: resumed from the newest intact checkpoint, or fresh.
    batcher = task.train_batches(jax.process_index(), jax.process_count())
    ckpts = _Checkpoints(run, batcher)
    create = initial_state_fn(task, run.tx, cfg.train.seed, cfg.train.batch_size)
    state, current = _resume_or_start(run, ckpts, batcher, create, log)
    run = _with_task(run, ckpts, current)
    start, total = int(state.step), cfg.train.steps
    compact_every, compact_threshold = compaction_settings(cfg)

    # --- The files: metrics from the restored step on, the config (and its accepted change).
    writer = MetricsWriter(files.workdir)
    writer.start_at(start)
    if start > 0 and run.config_changes and jax.process_index() == 0:
        record_config_change(files.workdir, start, run.config_changes)
        log(f"resuming with a changed config from step {start}: {format_changes(run.config_changes)}")
    if jax.process_index() == 0:
        files.config.write_text(cfg.to_json_best_effort(indent=1), encoding="utf-8")

    # --- Train: log, evaluate (keeping the best), checkpoint, stop cleanly on SIGTERM.
    train_step, to_device = _compile_step(run, jax.tree.map(lambda a: a.sharding, state))
    meter = Throughput(start, cfg.train.batch_size)
    bar = tqdm(total=total, initial=start, disable=not progress, dynamic_ncols=True, unit="step")
    for step in range(start, total):
        state, metrics = train_step(state, to_device(next(batcher)))
        done = step + 1
        bar.update(1)
        if _due(done, cfg.train.log_every, total):
            _log_train(writer, bar, ckpts, state, metrics, done, meter.tick(done))
        if _due(done, cfg.train.eval_every, total):
            ev = _evaluate(run, state, done)
            writer.write(done, "eval", ev)
            log(_eval_line(run, done, ev, metrics, meter.rate))
            _keep_if_best(run, ckpts, state, ev)
        if on_step is not None:
            on_step(done)
        if run.prune and compact_every and done % compact_every == 0 and done < total:
            state, new_task, compacted = compact_state(state, run.task, run.tx, cfg, run.mesh, compact_threshold)
            if compacted.dropped:
                run = _with_task(run, ckpts, new_task)
                train_step, to_device = _compile_step(run, jax.tree.map(lambda a: a.sharding, state))
                writer.write(done, "compact", {"prunable_params": prunable_params(state.params, run.basis)})
                log(f"step {done}: compacted {describe(compacted)} (P(z != 0) < {compact_threshold:g}); "
                    "the step recompiles for the smaller shapes")
        if _due(done, cfg.train.checkpoint_every, total):
            ckpts.save(ckpts.latest, state)
        if flag.stop(done) and done < total:  # every host asks after every step: they stop on the same one
            if not _due(done, cfg.train.checkpoint_every, total):  # else saved just above
                ckpts.save(ckpts.latest, state)
            bar.close()
            ckpts.close()
            log(f"SIGTERM: saved step {done} to {ckpts.latest.directory}; rerun the same command to resume.")
            return {"status": "preempted", "step": done}
    bar.close()

    # --- The end: the best params, shrunk, saved, reloaded, evaluated and timed.
    final_params, source, final_task = _final_params(run, ckpts, state, log)
    ckpts.close()
    summary = finalize(dataclasses.replace(run, task=final_task), final_params, log=log, stop=flag.stop)
    if summary is None:
        log("SIGTERM during the end of the run: the training is saved; rerun the same command to finish it.")
        return {"status": "preempted", "step": int(state.step)}
    summary.update(status="done", step=int(state.step), final_params_from=source, train_sequences_per_s=meter.rate)
    if jax.process_index() == 0:
        files.summary.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        _write_plots(run, final_task, final_params, log)
    return summary


def _write_plots(run: Run, task: Any, params: Any, log: Callable) -> None:
    """The run's PNGs (:mod:`flaxprune.training.run_plots`); failing to draw never fails a finished run."""
    try:
        rows = report(jax.device_get(params), task.model_config) if run.gated else []
        written = plot_run(run.workdir, rows)
    except (OSError, ValueError, RuntimeError) as e:
        log(f"plots not written: {e}")
        return
    log(f"plots: {', '.join(p.name for p in written)} in {run.workdir}")
