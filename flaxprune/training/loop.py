"""The training loop: FLOP on a language model, data parallel, resumable, preemptible.

``train(config, workdir)`` validates everything (config, data, model, an
existing checkpoint's model config, device divisibility) before it writes
anything; then trains with the combined optimizer, evaluates with
deterministic masks, keeps keep-N atomic checkpoints (state, data position,
PRNG key, carried hidden state) and the best one (FLOP's rule: only while the
hard sparsity is at least the target less ``prune.best_tolerance``), saves and
exits cleanly on SIGTERM, and stops on a non-finite loss with the last good
checkpoint intact. At the end it shrinks the model and writes a summary
(:mod:`flaxprune.training.finalize`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from flaxprune.lagrangian import flop_optimizer, target_schedule
from flaxprune.serialization import config_from_json, config_to_json
from flaxprune.size import expected_sparsity, hard_sparsity, open_sparsity
from flaxprune.spectral import spectral_gates
from flaxprune.training import sharding
from flaxprune.training.checkpoint import CheckpointStore
from flaxprune.training.config import learning_rate_schedule, validate
from flaxprune.training.init_from import load_initial_params
from flaxprune.training.metrics import MetricsWriter, to_python
from flaxprune.training.state import TrainState, init_state
from flaxprune.training.steps import make_train_step
from flaxprune.training.tasks import build_task

__all__ = ["NonFiniteLossError", "Run", "prepare", "train"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
    """Everything built from a config, before any file is written."""

    config: Any
    workdir: pathlib.Path
    task: Any
    mesh: Any
    tx: Any
    lr_fn: Callable
    target_fn: Callable
    model_json: str

    @property
    def prune(self) -> bool:
        return bool(self.config.prune.enabled)

    @property
    def basis(self) -> str:
        """The sparsity basis (:mod:`flaxprune.size`): ``'factors'`` or ``'dense'``."""
        return _basis(self.config)

    @property
    def model_config(self) -> Any:
        return self.task.model_config


def prepare(config: Any, workdir: str | pathlib.Path) -> Run:
    """Validates the config and builds data, model, mesh and optimizer; writes nothing.

    Raises:
      ValueError / FileNotFoundError: on a bad config field, a missing or
        empty data file, a batch that does not split over the devices, or a
        checkpoint in ``workdir`` from a different model config.
    """
    validate(config)
    workdir = pathlib.Path(workdir)
    sharding.initialize_distributed()
    mesh = sharding.make_mesh(config.train.num_devices or None)
    sharding.check_divisible("config.train.batch_size", config.train.batch_size, mesh)
    sharding.check_divisible("config.train.eval_batch_size", config.train.eval_batch_size, mesh)
    task = build_task(config, mesh)
    model_json = config_to_json(task.model_config)
    ckpt_dir = workdir / "checkpoints"
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        store = CheckpointStore(ckpt_dir, config.train.keep_checkpoints)
        if store.latest_step() is not None:
            saved = store.read_meta()["model_config"]
            if not _same_config(saved, task.model_config):
                raise ValueError(
                    f"{ckpt_dir} holds a checkpoint of a different model config; use a new --workdir or the "
                    f"config that made it.\nsaved:   {saved}\ncurrent: {model_json}"
                )
        store.close()
    lr_fn = learning_rate_schedule(config.optim, config.train.steps)
    o = config.optim
    tx = flop_optimizer(
        lr_fn,
        o.gate_learning_rate,
        o.lambda_learning_rate,
        clip_norm=o.clip_norm or None,
        weight_decay=o.weight_decay,
    )
    target_fn = target_schedule(0.0, 0)  # unpruned: no penalty, the target is only logged
    if config.prune.enabled:  # the ramp starts where the model starts: every gate open (shapes only)
        shapes = jax.eval_shape(task.init_params, jax.random.key(0))
        start = open_sparsity(shapes, _basis(config))
        target_fn = target_schedule(config.prune.target, config.prune.target_warmup, start=start)
    return Run(config, workdir, task, mesh, tx, lr_fn, target_fn, model_json)


def _basis(config: Any) -> str:
    return str(config.prune.get("basis", "factors"))


def _same_config(saved_json: str, config: Any) -> bool:
    """Whether a checkpoint's saved model config is ``config`` (fields added since take their defaults)."""
    try:
        return config_from_json(saved_json) == config
    except (ValueError, TypeError):
        return False


def _state_shardings(run: Run, abstract: TrainState) -> TrainState:
    repl = sharding.replicated(run.mesh)
    shardings = jax.tree.map(lambda _: repl, abstract)
    return shardings.replace(carry=sharding.carry_sharding(abstract.carry, run.mesh))


def _create_state_fn(run: Run) -> Callable[[], TrainState]:
    cfg = run.config

    def create():
        root = jax.random.key(cfg.train.seed)
        init_key, train_key = jax.random.split(root)
        params = run.task.init_params(init_key)
        return init_state(params, run.tx, train_key, run.task.initial_carry(cfg.train.batch_size))

    return create


@contextlib.contextmanager
def _preemption_flag():
    """Sets ``flag['stop']`` on SIGTERM (Cloud TPU preemption) instead of dying mid-step."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, but still a flag
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def train(
    config: Any,
    workdir: str | pathlib.Path,
    *,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) a run; returns its summary (``status`` says how it ended).

    Args:
      config: the experiment ConfigDict (``experiments/configs/*.py``).
      workdir: where checkpoints, metrics and the reduced model go.
      on_step: called with the step number after each update (tests use it
        to interrupt a run).
      log: where to print progress lines.
      progress: show a tqdm progress bar.

    Returns:
      ``{'status': 'done' | 'preempted', ...}``; when done, the final summary.
    """
    from flaxprune.training.finalize import finalize  # the end of a run: shrink, save, evaluate, time

    run = prepare(config, workdir)
    cfg, mesh = run.config, run.mesh
    run.workdir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(run.workdir / "checkpoints", cfg.train.keep_checkpoints)
    best_store = CheckpointStore(run.workdir / "best", 1)
    writer = MetricsWriter(run.workdir)
    (run.workdir / "config.json").write_text(cfg.to_json_best_effort(indent=1), encoding="utf-8")

    create = _create_state_fn(run)
    abstract = jax.eval_shape(create)
    state_sh = _state_shardings(run, abstract)
    task = run.task
    batcher = task.train_batches(jax.process_index(), jax.process_count())
    sign = 1.0 if task.higher_is_better else -1.0  # best_score is kept as "higher is better"
    best_score = float("-inf")
    if store.latest_step() is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
        state, meta = store.restore(target)
        batcher.restore(meta["data"])
        best_score = meta.get("best_score", best_score)
        log(f"resumed from step {int(state.step)} in {store.directory}")
    else:
        state = jax.jit(create, out_shardings=state_sh)()
        params, source = task.initial_params(state.params), "the task's pretrained weights"
        if cfg.get("init_from"):
            params, source = load_initial_params(cfg.init_from, state.params), cfg.init_from
        if run.prune and cfg.prune.get("gate_init", "constant") == "spectral":
            if params is None:
                raise ValueError(
                    "config.prune.gate_init='spectral' sets each gate from its singular value, which needs a warm "
                    "start: a task with pretrained weights (BERT) or config.init_from; use gate_init='constant'."
                )
            params = spectral_gates(jax.device_get(params), *cfg.prune.gate_range)
            source += f", gates from the spectrum in {tuple(cfg.prune.gate_range)}"
        if params is not None:
            params = jax.device_put(params, jax.tree.map(lambda _: sharding.replicated(mesh), params))
            state = state.replace(trainable={**state.trainable, "params": params})
            log(f"initialised from {source}")

    step_fn = make_train_step(
        task,
        run.tx,
        prune=run.prune,
        target_fn=run.target_fn,
        gate=run.model_config.plan.gate,
        basis=run.basis,
        learning_rate_fn=run.lr_fn,
    )
    repl = sharding.replicated(mesh)
    spec = task.batch_spec()
    batch_sh = {k: sharding.batch_sharding(mesh) if split else repl for k, split in spec.items()}
    train_step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    gate = run.model_config.plan.gate

    def meta() -> dict[str, Any]:
        return {"model_config": run.model_json, "data": batcher.state(), "best_score": best_score}

    def save(store_: CheckpointStore, state_: TrainState) -> None:
        if not bool(state_.finite):
            raise NonFiniteLossError(
                f"the loss became non-finite at or before step {int(state_.step)}; nothing was saved, and the last "
                f"good checkpoint (step {store.latest_step()}) in {store.directory} is intact. Lower "
                "config.optim.learning_rate or config.optim.clip_norm, then resume."
            )
        store_.save(int(state_.step), state_, meta())

    start_step = int(state.step)
    examples_per_step = cfg.train.batch_size
    bar = tqdm(total=cfg.train.steps, initial=start_step, disable=not progress, dynamic_ncols=True, unit="step")
    t_last, s_last, rate = time.perf_counter(), start_step, float("nan")
    status = "done"
    with _preemption_flag() as flag:
        for step in range(start_step, cfg.train.steps):
            host = next(batcher)
            batch = {k: sharding.put_batch(v, mesh) if spec[k] else np.asarray(v) for k, v in host.items()}
            state, metrics = train_step(state, batch)
            done = step + 1
            bar.update(1)
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                m = to_python(metrics)
                now = time.perf_counter()
                rate = (done - s_last) * examples_per_step / max(now - t_last, 1e-9)
                t_last, s_last = now, done
                m["examples_per_s"] = rate
                writer.write(done, "train", m)
                if not bool(state.finite):
                    bar.close()
                    raise NonFiniteLossError(
                        f"the loss became non-finite at or before step {done} (loss={m['loss']}); the last good "
                        f"checkpoint (step {store.latest_step()}) in {store.directory} is intact. Lower "
                        "config.optim.learning_rate or config.optim.clip_norm, then resume."
                    )
                bar.set_postfix(loss=f"{m['loss']:.3f}", s=f"{m['expected_sparsity']:.3f}", t=f"{m['target']:.3f}")
            if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                ev = task.evaluate(state.params, "valid")
                if run.prune:
                    ev["hard_sparsity"] = float(hard_sparsity(state.params, gate, run.basis))
                    ev["expected_sparsity"] = float(expected_sparsity(state.params, gate, run.basis))
                    ev["target"] = float(run.target_fn(done))
                writer.write(done, "eval", ev)
                train_part = ", ".join(
                    f"{k} {float(metrics[k]):.4f}" for k in metrics if k in ("loss", "bpc", "accuracy")
                )
                log(
                    f"step {done}: {task.score_name}{' (eval mask)' if run.prune else ''} {ev[task.score_name]:.4f} | "
                    f"train{' (sampled gates)' if run.prune else ''} {train_part}"
                    + (
                        f" | sparsity hard {ev['hard_sparsity']:.3f} expected {ev['expected_sparsity']:.3f} "
                        f"target {ev['target']:.3f} | lambda {float(metrics['lambda_1']):+.3f} "
                        f"{float(metrics['lambda_2']):+.3f}"
                        if run.prune
                        else ""
                    )
                    + f" | {rate:,.1f} sequences/s"
                )
                at_target = not run.prune or ev["hard_sparsity"] >= cfg.prune.target - cfg.prune.best_tolerance
                if at_target and sign * ev[task.score_name] > best_score:
                    best_score = sign * ev[task.score_name]
                    save(best_store, state)
            if on_step is not None:
                on_step(done)
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
                save(store, state)
            if flag["stop"] and done < cfg.train.steps:
                save(store, state)
                status = "preempted"
                log(f"SIGTERM: saved step {done} to {store.directory}; rerun the same command to resume.")
                break
    bar.close()
    if status == "preempted":
        store.close()
        best_store.close()
        return {"status": status, "step": int(state.step)}
    final_params = state.params
    source = "last"
    if best_store.latest_step() is not None:
        best_abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh
        )
        best_state, best_meta = best_store.restore(best_abstract)
        final_params, source = best_state.params, f"best (step {int(best_state.step)})"
    store.close()
    best_store.close()
    summary = finalize(run, final_params, log=log)
    summary.update(status="done", step=int(state.step), final_params_from=source, train_sequences_per_s=rate)
    (run.workdir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
