"""Work on a finished (or running) run's files: evaluate, shrink, report.

These back the ``flaxprune eval | shrink | report`` commands. The run
directory's layout (``config.json``, ``checkpoints/``, ``reduced/``, ...) and
its reading belong to :mod:`flaxprune.training.checkpoint`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import ml_collections

from flaxprune.dense_reference import kept_weights, reference_params
from flaxprune.models import model_for
from flaxprune.size import format_report, gate_groups, hard_sparsity, report, total_params
from flaxprune.surgery import shrink
from flaxprune.training import sharding
from flaxprune.training.run_dir import RunFiles
from flaxprune.training.checkpoint import (
    check_output,
    load_reduced,
    read_latest,
    save_reduced,
)
from flaxprune.training.state_compaction import train_model_config
from flaxprune.training.task import build_task

__all__ = ["evaluate_run", "finished_summary", "load_run", "report_checkpoint", "shrink_run"]


def finished_summary(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``config`` in ``workdir``; None: train (or resume) it.

    Finished: ``summary.json`` says ``done`` at ``config.train.steps`` and the
    run's stored config equals ``config``. What an experiment script checks
    before it trains, so rerunning its command reuses the runs it finished.
    """
    files = RunFiles(workdir)
    if not (files.summary.is_file() and files.config.is_file()):
        return None
    if json.loads(files.config.read_text(encoding="utf-8")) != json.loads(config.to_json_best_effort()):
        return None
    done = json.loads(files.summary.read_text(encoding="utf-8"))
    return done if done.get("status") == "done" and done.get("step") == config.train.steps else None


def _experiment_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    path = RunFiles(workdir).config
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a flaxprune run directory.")
    return ml_collections.ConfigDict(json.loads(path.read_text(encoding="utf-8")))


def load_run(workdir: str | pathlib.Path, which: str = "checkpoints") -> tuple[Any, Any, Any, int]:
    """``(model, params, model_config, step)`` of the newest checkpoint in ``workdir/<which>``.

    Args:
      workdir: a run directory.
      which: ``'checkpoints'`` (the newest training state) or ``'best'``.

    Raises:
      FileNotFoundError: if there is no checkpoint.
    """
    directory = RunFiles(workdir).workdir / which
    found = read_latest(directory)
    if found is None:
        raise FileNotFoundError(f"no checkpoints under {directory}.")
    state, meta, step = found
    config = train_model_config(meta)  # the compacted model's, for a run that compacted
    return model_for(config), state["trainable"]["params"], config, step


def evaluate_run(workdir: str | pathlib.Path, split: str = "valid", reduced: bool = False) -> dict[str, float]:
    """Metrics of the run's newest checkpoint (or its reduced model) on ``split``, as the run's task scores them."""
    workdir = pathlib.Path(workdir)
    cfg = _experiment_config(workdir)
    if reduced:
        model, params, config = load_reduced(RunFiles(workdir).reduced)
    else:
        model, params, config, _ = load_run(workdir)
    mesh = sharding.make_mesh(cfg.train.num_devices or None)
    task = build_task(cfg, mesh).with_model(model, config)
    return task.evaluate(jax.device_get(params), split)


def shrink_run(workdir: str | pathlib.Path, output: str | pathlib.Path, overwrite: bool = False) -> tuple[int, int]:
    """Shrinks the run's newest checkpoint into ``output``; returns params before and after.

    ``output`` must be new or empty, or an earlier reduced model with
    ``overwrite``: it is checked before anything is loaded or written.

    Raises:
      FileExistsError: for an output that may not be written (see :func:`~flaxprune.training.checkpoint.check_output`).
      FileNotFoundError: if the run has no checkpoint.
    """
    check_output(output, overwrite)
    _, params, config, _ = load_run(workdir)
    small, small_config = shrink(params, config)
    save_reduced(output, small, small_config, overwrite=overwrite)
    return total_params(params), total_params(small)


def report_checkpoint(path: str | pathlib.Path) -> str:
    """The per-layer report of a run's newest checkpoint or of a reduced model."""
    path = pathlib.Path(path)
    if RunFiles(path).checkpoints.is_dir():
        _, params, config, step = load_run(path)
        title = f"{path} (step {step})"
    else:
        _, params, config = load_reduced(path)
        title = f"{path} (reduced)"
    gate = config.plan.gate
    lines = [title, format_report(report(params, gate, config.plan)), f"total params: {total_params(params):,}"]
    if gate_groups(params):
        for basis, what in (("factors", "the gated weights"), ("dense", "the dense layers they stand for")):
            lines.append(f"hard sparsity of {what} ({basis!r} basis): {float(hard_sparsity(params, gate, basis)):.4f}")
    shapes = getattr(config, "prunable_shapes", None)
    if shapes:  # the one sparsity every method shares (flaxprune.dense_reference)
        kept, total = int(kept_weights(params, config, shapes)), reference_params(shapes)
        lines.append(
            f"dense-reference sparsity (method {getattr(config, 'method', 'flop')!r}; the same count for every "
            f"method): {1.0 - kept / total:.4f}, {kept:,} of the {total:,} weights of the dense pruned matrices kept"
        )
    return "\n".join(lines)
