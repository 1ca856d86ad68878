"""The end of a run: shrink, save the reduced model, evaluate it, time it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from flaxprune.size import prunable_params, total_params
from flaxprune.surgery import shrink
from flaxprune.training import sharding
from flaxprune.training.checkpoint import load_reduced, save_reduced
from flaxprune.training.prune_method import method_of
from flaxprune.training.run_dir import RunFiles

__all__ = ["finalize", "forward_call", "time_forward"]


def forward_call(model: Any, params: Any, inputs: tuple) -> Callable[[], Any]:
    """A callable of no arguments: the jitted deterministic forward pass ``model.apply(params, *inputs)``."""
    fn = jax.jit(lambda p, args: model.apply({"params": p}, *args, deterministic=True))
    return lambda: fn(params, inputs)


def time_forward(model: Any, params: Any, inputs: tuple, repeats: int = 10) -> float:
    """Median seconds of one jitted deterministic forward pass ``model.apply(params, *inputs)``."""
    call = forward_call(model, params, inputs)
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def finalize(
    run: Any, params: Any, log: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False
) -> dict[str, Any] | None:
    """Evaluates the final params; when pruning, shrinks, saves, reloads and re-evaluates the reduced model.

    Returns None when ``stop()`` (a SIGTERM) turns true between two stages:
    nothing of the summary is written then, and rerunning the run repeats
    the end from its last checkpoint (``reduced/`` is the run's own and is
    replaced).
    """
    task = run.task
    params = jax.device_get(params)
    gated_metrics = {**task.evaluate(params, "valid"), **task.evaluate(params, "test")}
    if stop():
        return None
    inputs = task.speed_inputs()
    summary: dict[str, Any] = {"params": total_params(params), **gated_metrics}
    full = run.full_task if run.full_task is not None else task
    if full is task:
        summary["seconds_per_batch"] = time_forward(task.model, params, inputs)
    else:  # compacted during training: the speedup is against the model at its full shapes (its timing needs no
        # trained weights, only its shapes)
        summary["compacted_params"] = summary["params"]
        summary["params"] = total_params(jax.eval_shape(full.init_params, jax.random.key(0)))
        full_params = jax.jit(full.init_params)(jax.random.key(0))
        summary["seconds_per_batch"] = time_forward(full.model, full_params, inputs)
    if stop():
        return None
    if not run.prune:
        log(f"\nfinal: params {summary['params']:,} | {_fmt(gated_metrics)}")
        return summary
    small, small_config = shrink(params, run.model_config)
    reduced_dir = RunFiles(run.workdir).reduced
    save_reduced(reduced_dir, small, small_config, overwrite=True)  # the run's own, from an interrupted end
    model, small, _ = load_reduced(reduced_dir)  # prove it reloads without the original config
    small = jax.device_put(small, jax.tree.map(lambda _: sharding.replicated(run.mesh), small))
    reduced_task = task.with_model(model, small_config)
    if stop():
        return None
    reduced_metrics = {**reduced_task.evaluate(small, "valid"), **reduced_task.evaluate(small, "test")}
    if stop():
        return None
    summary.update(
        prunable_params=run.prunable if run.prunable is not None else prunable_params(params, run.basis),
        sparsity_basis=run.basis,
        hard_sparsity=run.hard_sparsity(params),
        target=float(run.config.prune.target),
        reduced_params=total_params(small),
        **{f"reduced_{k}": v for k, v in reduced_metrics.items()},
        reduced_seconds_per_batch=time_forward(model, small, inputs),
    )
    summary["speedup"] = summary["seconds_per_batch"] / summary["reduced_seconds_per_batch"]
    reference = run.reference_sparsity(params)
    if reference is not None:  # one sparsity for every method: the dense reference model's
        summary.update(method=method_of(run.config), reference_sparsity=reference)
    shape = " x ".join(str(d) for d in np.shape(inputs[0]))
    log(
        f"\n{'':<20}{'params':>12}  metrics\n"
        f"{'gated (eval mask)':<20}{summary['params']:>12,}  {_fmt(gated_metrics)}  "
        f"{summary['seconds_per_batch'] * 1e3:.1f} ms/batch\n"
        f"{'reduced':<20}{summary['reduced_params']:>12,}  {_fmt(reduced_metrics)}  "
        f"{summary['reduced_seconds_per_batch'] * 1e3:.1f} ms/batch\n"
        f"hard sparsity {summary['hard_sparsity']:.3f} (target {summary['target']}), inference speedup "
        f"x{summary['speedup']:.2f} (batch {shape}), reduced model in {reduced_dir}"
    )
    return summary
