"""The training loop: FLOP on a language model, data parallel, resumable, preemptible.

``train(config, workdir)`` validates everything (config, data, model, an
existing checkpoint's model config, device divisibility) before it writes
anything; then trains with the combined optimizer, evaluates with
deterministic masks, keeps keep-N atomic checkpoints (state, data position,
PRNG key, carried hidden state) and the best one (FLOP's rule: only while the
hard sparsity is within ``prune.best_tolerance`` of the target), saves and
exits cleanly on SIGTERM, and stops on a non-finite loss with the last good
checkpoint intact. At the end it shrinks the model and writes a summary
(:mod:`flaxprune.training.finalize`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from flaxprune.data.batching import StreamBatcher
from flaxprune.data.corpus import load_corpus
from flaxprune.gates import GateConfig
from flaxprune.lagrangian import flop_optimizer, target_schedule
from flaxprune.models import build_model
from flaxprune.plan import Plan
from flaxprune.serialization import config_to_json
from flaxprune.size import hard_sparsity, expected_sparsity
from flaxprune.training import sharding
from flaxprune.training.checkpoint import CheckpointStore
from flaxprune.training.config import learning_rate_schedule, validate
from flaxprune.training.evaluate import Evaluator
from flaxprune.training.init_from import load_initial_params
from flaxprune.training.metrics import MetricsWriter, to_python
from flaxprune.training.state import TrainState, init_state
from flaxprune.training.steps import make_train_step

__all__ = ["NonFiniteLossError", "Run", "prepare", "train"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
    """Everything built from a config, before any file is written."""

    config: Any
    workdir: pathlib.Path
    corpus: Any
    model: Any
    model_config: Any
    mesh: Any
    tx: Any
    lr_fn: Callable
    target_fn: Callable
    model_json: str

    @property
    def prune(self) -> bool:
        return bool(self.config.prune.enabled)


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
    data = {k: v for k, v in dict(config.data).items() if v is not None}
    data["data_dir"] = os.path.expanduser(data.get("data_dir") or "~/tensorflow_datasets")
    corpus = load_corpus(**data)
    fields = dict(config.model)
    name = fields.pop("name")
    gate = GateConfig(**dict(config.prune.gate)) if "gate" in config.prune else GateConfig()
    model, model_config = build_model(
        name, **fields, vocab_size=corpus.vocab_size, gated=bool(config.prune.enabled), plan=Plan(gate=gate)
    )
    model_json = config_to_json(model_config)
    ckpt_dir = workdir / "checkpoints"
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        store = CheckpointStore(ckpt_dir, config.train.keep_checkpoints)
        if store.latest_step() is not None:
            saved = store.read_meta()["model_config"]
            if saved != model_json:
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
    target_fn = target_schedule(config.prune.target if config.prune.enabled else 0.0, config.prune.target_warmup)
    return Run(config, workdir, corpus, model, model_config, mesh, tx, lr_fn, target_fn, model_json)


def _state_shardings(run: Run, abstract: TrainState) -> TrainState:
    repl = sharding.replicated(run.mesh)
    shardings = jax.tree.map(lambda _: repl, abstract)
    return shardings.replace(carry=sharding.carry_sharding(abstract.carry, run.mesh))


def _create_state_fn(run: Run) -> Callable[[], TrainState]:
    cfg = run.config

    def create():
        root = jax.random.key(cfg.train.seed)
        init_key, train_key = jax.random.split(root)
        tokens = np.zeros((1, cfg.train.seq_len), np.int32)
        carry1 = run.model.initial_carry(1)
        params = run.model.init({"params": init_key}, tokens, carry1, deterministic=True)["params"]
        return init_state(params, run.tx, train_key, run.model.initial_carry(cfg.train.batch_size))

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
    batcher = StreamBatcher(
        run.corpus.train,
        cfg.train.batch_size,
        cfg.train.seq_len,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    best_valid = float("inf")
    if store.latest_step() is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
        state, meta = store.restore(target)
        batcher.restore(meta["data"])
        best_valid = meta.get("best_valid", best_valid)
        log(f"resumed from step {int(state.step)} in {store.directory}")
    else:
        state = jax.jit(create, out_shardings=state_sh)()
        if cfg.get("init_from"):
            params = load_initial_params(cfg.init_from, state.params)
            params = jax.device_put(params, jax.tree.map(lambda _: sharding.replicated(mesh), params))
            state = state.replace(trainable={**state.trainable, "params": params})
            log(f"initialised from {cfg.init_from}")

    step_fn = make_train_step(
        run.model,
        run.tx,
        prune=run.prune,
        target_fn=run.target_fn,
        gate=run.model_config.plan.gate,
        learning_rate_fn=run.lr_fn,
    )
    repl = sharding.replicated(mesh)
    batch_sh = {"x": sharding.batch_sharding(mesh), "y": sharding.batch_sharding(mesh), "reset": repl}
    train_step = jax.jit(step_fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    evaluator = Evaluator(run.model, mesh, cfg.train.eval_batch_size, cfg.train.seq_len)
    gate = run.model_config.plan.gate

    def meta() -> dict[str, Any]:
        return {"model_config": run.model_json, "data": batcher.state(), "best_valid": best_valid}

    def save(store_: CheckpointStore, state_: TrainState) -> None:
        if not bool(state_.finite):
            raise NonFiniteLossError(
                f"the loss became non-finite at or before step {int(state_.step)}; nothing was saved, and the last "
                f"good checkpoint (step {store.latest_step()}) in {store.directory} is intact. Lower "
                "config.optim.learning_rate or config.optim.clip_norm, then resume."
            )
        store_.save(int(state_.step), state_, meta())

    start_step = int(state.step)
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    bar = tqdm(total=cfg.train.steps, initial=start_step, disable=not progress, dynamic_ncols=True, unit="step")
    t_last, s_last, tok_s = time.perf_counter(), start_step, float("nan")
    status = "done"
    with _preemption_flag() as flag:
        for step in range(start_step, cfg.train.steps):
            segment = next(batcher)
            batch = {
                "x": sharding.put_batch(segment.x.astype(np.int32), mesh),
                "y": sharding.put_batch(segment.y.astype(np.int32), mesh),
                "reset": np.asarray(segment.new_epoch),
            }
            state, metrics = train_step(state, batch)
            done = step + 1
            bar.update(1)
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                m = to_python(metrics)
                now = time.perf_counter()
                tok_s = (done - s_last) * tokens_per_step / max(now - t_last, 1e-9)
                t_last, s_last = now, done
                m["tokens_per_s"] = tok_s
                writer.write(done, "train", m)
                bar.set_postfix(bpc=f"{m['bpc']:.3f}", s=f"{m['expected_sparsity']:.3f}", t=f"{m['target']:.3f}")
                if not bool(state.finite):
                    bar.close()
                    raise NonFiniteLossError(
                        f"the loss became non-finite at or before step {done} (loss={m['loss']}); the last good "
                        f"checkpoint (step {store.latest_step()}) in {store.directory} is intact. Lower "
                        "config.optim.learning_rate or config.optim.clip_norm, then resume."
                    )
            if done % cfg.train.eval_every == 0 or done == cfg.train.steps:
                ev = {"valid_bpc": evaluator.bpc(state.params, run.corpus.valid)}
                if run.prune:
                    ev["hard_sparsity"] = float(hard_sparsity(state.params, gate))
                    ev["expected_sparsity"] = float(expected_sparsity(state.params, gate))
                    ev["target"] = float(run.target_fn(done))
                writer.write(done, "eval", ev)
                log(
                    f"step {done}: valid bpc (eval mask) {ev['valid_bpc']:.4f} | train bpc (sampled gates) "
                    f"{float(metrics['bpc']):.4f}"
                    + (
                        f" | sparsity hard {ev['hard_sparsity']:.3f} expected {ev['expected_sparsity']:.3f} "
                        f"target {ev['target']:.3f} | lambda {float(metrics['lambda_1']):+.3f} "
                        f"{float(metrics['lambda_2']):+.3f}"
                        if run.prune
                        else ""
                    )
                    + f" | {tok_s:,.0f} tokens/s"
                )
                at_target = not run.prune or abs(ev["hard_sparsity"] - cfg.prune.target) <= cfg.prune.best_tolerance
                if at_target and ev["valid_bpc"] < best_valid:
                    best_valid = ev["valid_bpc"]
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
    summary = finalize(run, final_params, evaluator, log=log)
    summary.update(status="done", step=int(state.step), final_params_from=source, train_tokens_per_s=tok_s)
    (run.workdir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
