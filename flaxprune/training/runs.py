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
from flaxprune.training.checkpoint import (
    check_output,
    load_reduced,
    read_latest,
    save_reduced,
)
from flaxprune.training.config import with_resolved_defaults
from flaxprune.training.run_dir import RunFiles
from flaxprune.training.state_compaction import train_model_config
from flaxprune.training.task import build_task

__all__ = ["evaluate_run", "finished_summary", "load_run", "report_checkpoint", "report_config", "shrink_run"]


def finished_summary(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``config`` in ``workdir``; None: train (or resume) it.

    Finished: ``summary.json`` says ``done`` at ``config.train.steps`` and the
    run's stored config equals ``config`` (with the controller defaults it ran
    under written out: :func:`~flaxprune.training.config.with_resolved_defaults`). What an experiment script checks
    before it trains, so rerunning its command reuses the runs it finished.
    """
    files = RunFiles(workdir)
    if not (files.summary.is_file() and files.config.is_file()):
        return None
    resolved = with_resolved_defaults(config)  # as the run wrote it
    if json.loads(files.config.read_text(encoding="utf-8")) != json.loads(resolved.to_json_best_effort()):
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


def report_config(config: Any, name: str = "config", vocab_size: int | None = None) -> str:
    """The per-layer report of the language model a config file builds, without allocating its weights.

    The weights are shapes (``jax.eval_shape``); only the gates are drawn, as at the start of training, so
    a 150M-parameter model (``sru_wt103.py``) reports its size on any machine.

    Args:
      config: an experiment ConfigDict of a language model (``experiments/configs/*.py``).
      name: what to call it in the title (its file name).
      vocab_size: the vocabulary (by default the model config's own default: 256 bytes for the SRU,
        WikiText-103's 267,735 words for the word SRU).

    Raises:
      ValueError: for a bad config field or a config whose task is not language modeling.
    """
    import jax.numpy as jnp

    from flaxprune.gates import is_gate_param, log_alpha_init
    from flaxprune.models import build_model
    from flaxprune.training.config import method_fields, plan_from_config, validate

    validate(config)
    if config.get("task", "lm") != "lm":
        raise ValueError(f"report --config={name}: config.task={config.task!r}; accepted: a language model ('lm').")
    fields = dict(config.model)
    name = fields.pop("name")
    fields.update(method_fields(config))
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    model, model_config = build_model(name, **fields, gated=bool(config.prune.enabled), plan=plan_from_config(config))
    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, model.initial_carry(1))["params"])
    gate = model_config.plan.gate
    init = log_alpha_init(gate.drop_rate, gate.init_std)

    def concrete_gates(key_path, leaf):
        last = key_path[-1]
        return init(jax.random.key(0), leaf.shape) if is_gate_param(getattr(last, "key", last)) else leaf

    params = jax.tree_util.tree_map_with_path(concrete_gates, shapes)
    lines = [f"{name} ({type(model_config).__name__}, vocab_size {model_config.vocab_size:,}; at initialization)",
             format_report(report(params, gate, model_config.plan)), f"total params: {total_params(params):,}"]
    return "\n".join(lines)
