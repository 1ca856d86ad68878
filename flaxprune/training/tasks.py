"""Builds the :class:`~flaxprune.training.task.Task` an experiment config names (``config.task``)."""

from __future__ import annotations

import os
from typing import Any

from flaxprune.gates import GateConfig
from flaxprune.plan import Plan

__all__ = ["TASKS", "build_task"]

TASKS = ("lm", "glue")


def _plan(config: Any) -> Plan:
    """The model's plan; an unpruned run has no gates, so its gate settings are the defaults."""
    use = config.prune.enabled and "gate" in config.prune
    return Plan(gate=GateConfig(**dict(config.prune.gate)) if use else GateConfig())


def _build_lm(config: Any, mesh: Any):
    from flaxprune.data.corpus import load_corpus
    from flaxprune.models import build_model
    from flaxprune.training.lm_task import LanguageModelingTask

    data = {k: v for k, v in dict(config.data).items() if v is not None}
    data["data_dir"] = os.path.expanduser(data.get("data_dir") or "~/tensorflow_datasets")
    corpus = load_corpus(**data)
    fields = dict(config.model)
    name = fields.pop("name")
    model, model_config = build_model(
        name, **fields, vocab_size=corpus.vocab_size, gated=bool(config.prune.enabled), plan=_plan(config)
    )
    t = config.train
    return LanguageModelingTask(
        model=model,
        model_config=model_config,
        corpus=corpus,
        mesh=mesh,
        batch_size=t.batch_size,
        seq_len=t.seq_len,
        eval_batch_size=t.eval_batch_size,
        speed_batch_size=t.get("speed_batch_size", t.eval_batch_size),
    )


def build_task(config: Any, mesh: Any) -> Any:
    """The task of ``config.task`` (default ``'lm'``), with its data loaded and its model built.

    Raises:
      ValueError: for an unknown task or model field; FileNotFoundError for missing data.
    """
    name = config.get("task", "lm")
    if name == "lm":
        return _build_lm(config, mesh)
    if name == "glue":
        from flaxprune.training.glue_task import build_glue_task

        return build_glue_task(config, mesh, _plan(config))
    raise ValueError(f"config.task={name!r} is not a task; accepted: {list(TASKS)}.")
