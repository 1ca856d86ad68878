"""The end of a run: shrink, save the reduced model, evaluate it, time it."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from flaxprune.models import model_for
from flaxprune.serialization import config_from_json, config_to_json
from flaxprune.size import hard_sparsity, prunable_params, total_params
from flaxprune.surgery import shrink
from flaxprune.training import sharding
from flaxprune.training.checkpoint import CheckpointStore
from flaxprune.training.evaluate import Evaluator

__all__ = ["finalize", "load_reduced", "save_reduced", "time_forward"]


def save_reduced(directory: str | pathlib.Path, params: Any, config: Any) -> None:
    """Saves a model's params and its config (JSON) as one orbax checkpoint; reloads without the original config."""
    store = CheckpointStore(directory, keep=1)
    store.save(0, jax.device_get(params), {"model_config": config_to_json(config)})
    store.close()


def load_reduced(directory: str | pathlib.Path) -> tuple[Any, Any, Any]:
    """``(model, params, config)`` from :func:`save_reduced`'s directory.

    Raises:
      FileNotFoundError: if there is no saved model there.
    """
    store = CheckpointStore(directory, keep=1)
    if store.latest_step() is None:
        raise FileNotFoundError(f"load_reduced: no saved model under {directory}.")
    config = config_from_json(store.read_meta()["model_config"])
    model = model_for(config)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 1), np.int32), model.initial_carry(1), deterministic=True)[
            "params"
        ]
    )
    params, _ = store.restore(abstract)
    store.close()
    return model, params, config


def time_forward(model: Any, params: Any, tokens: np.ndarray, repeats: int = 10) -> float:
    """Median seconds of one jitted deterministic forward pass on ``tokens: [batch, time]``."""
    carry = model.initial_carry(tokens.shape[0])
    fn = jax.jit(lambda p, x, c: model.apply({"params": p}, x, c, deterministic=True)[0])
    jax.block_until_ready(fn(params, tokens, carry))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, tokens, carry))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def finalize(run: Any, params: Any, evaluator: Evaluator, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates the final params; when pruning, shrinks, saves, reloads and re-evaluates the reduced model."""
    cfg, corpus = run.config, run.corpus
    params = jax.device_get(params)
    summary: dict[str, Any] = {
        "params": total_params(params),
        "valid_bpc": evaluator.bpc(params, corpus.valid),
        "test_bpc": evaluator.bpc(params, corpus.test),
    }
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, corpus.vocab_size, (cfg.train.eval_batch_size, cfg.train.seq_len)).astype(np.int32)
    summary["seconds_per_batch"] = time_forward(run.model, params, tokens)
    if not run.prune:
        log(
            f"\nfinal: params {summary['params']:,} | valid bpc {summary['valid_bpc']:.4f} | "
            f"test bpc {summary['test_bpc']:.4f}"
        )
        return summary
    gate = run.model_config.plan.gate
    small, small_config = shrink(params, run.model_config)
    save_reduced(run.workdir / "reduced", small, small_config)
    model, small, _ = load_reduced(run.workdir / "reduced")  # prove it reloads without the original config
    reduced_eval = Evaluator(model, run.mesh, cfg.train.eval_batch_size, cfg.train.seq_len)
    small = jax.device_put(small, jax.tree.map(lambda _: sharding.replicated(run.mesh), small))
    summary.update(
        prunable_params=prunable_params(params),
        hard_sparsity=float(hard_sparsity(params, gate)),
        target=float(cfg.prune.target),
        reduced_params=total_params(small),
        reduced_valid_bpc=reduced_eval.bpc(small, corpus.valid),
        reduced_test_bpc=reduced_eval.bpc(small, corpus.test),
        reduced_seconds_per_batch=time_forward(model, small, tokens),
    )
    summary["speedup"] = summary["seconds_per_batch"] / summary["reduced_seconds_per_batch"]
    log(
        "\n"
        f"{'':<22}{'params':>12}{'valid bpc':>11}{'test bpc':>10}{'ms/batch':>10}\n"
        f"{'gated (eval mask)':<22}{summary['params']:>12,}{summary['valid_bpc']:>11.4f}{summary['test_bpc']:>10.4f}"
        f"{summary['seconds_per_batch'] * 1e3:>10.1f}\n"
        f"{'reduced':<22}{summary['reduced_params']:>12,}{summary['reduced_valid_bpc']:>11.4f}"
        f"{summary['reduced_test_bpc']:>10.4f}{summary['reduced_seconds_per_batch'] * 1e3:>10.1f}\n"
        f"hard sparsity {summary['hard_sparsity']:.3f} (target {summary['target']}), inference speedup "
        f"x{summary['speedup']:.2f} (batch {tokens.shape[0]} x {tokens.shape[1]} tokens), reduced model in "
        f"{run.workdir / 'reduced'}"
    )
    return summary
