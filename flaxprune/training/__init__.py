"""Training: FLOP runs end to end, data parallel, resumable, preemptible.

    from flaxprune.training import train, load_config_file
    summary = train(load_config_file("experiments/configs/sru_small.py"), "/tmp/run")

The pieces, one concept a file:

* ``loop``: :func:`prepare` (build and check everything, write nothing) and
  :func:`train` (or resume) a run;
* ``task``: the :class:`Task` protocol the loop trains through, and
  :func:`build_task`; ``lm_task`` (language modeling, its evaluator and
  :func:`build_lm_task`) and ``glue_task`` (BERT on GLUE,
  :func:`build_glue_task`);
* ``state``: :class:`TrainState`, its creation and its shardings; ``steps``:
  the jitted train step; ``sharding``: the data-parallel mesh;
* ``checkpoint``: the run directory's files and the only code that uses
  orbax: :class:`CheckpointStore`, :func:`save_reduced`, :func:`load_reduced`;
* ``finalize``: the end of a run (shrink, reload, evaluate, time); ``runs``:
  evaluate, shrink and report a run directory (the ``flaxprune`` command);
* ``config``: config validation and the learning-rate schedules;
  ``init_from``: warm starts; ``metrics``: ``metrics.jsonl``.

Names are imported on first use, so ``from flaxprune.training import
sharding`` does not pay for orbax, tfds or the tokenizer.
"""

import importlib

_LAZY = {
    "NonFiniteLossError": "flaxprune.training.loop",
    "Run": "flaxprune.training.loop",
    "prepare": "flaxprune.training.loop",
    "train": "flaxprune.training.loop",
    "TASKS": "flaxprune.training.task",
    "Task": "flaxprune.training.task",
    "build_task": "flaxprune.training.task",
    "Evaluator": "flaxprune.training.lm_task",
    "LanguageModelingTask": "flaxprune.training.lm_task",
    "build_lm_task": "flaxprune.training.lm_task",
    "GlueTask": "flaxprune.training.glue_task",
    "build_glue_task": "flaxprune.training.glue_task",
    "TrainState": "flaxprune.training.state",
    "abstract_target": "flaxprune.training.state",
    "init_state": "flaxprune.training.state",
    "initial_state_fn": "flaxprune.training.state",
    "state_shardings": "flaxprune.training.state",
    "make_train_step": "flaxprune.training.steps",
    "CheckpointStore": "flaxprune.training.checkpoint",
    "RunFiles": "flaxprune.training.checkpoint",
    "load_reduced": "flaxprune.training.checkpoint",
    "save_reduced": "flaxprune.training.checkpoint",
    "finalize": "flaxprune.training.finalize",
    "time_forward": "flaxprune.training.finalize",
    "evaluate_run": "flaxprune.training.runs",
    "load_run": "flaxprune.training.runs",
    "report_checkpoint": "flaxprune.training.runs",
    "shrink_run": "flaxprune.training.runs",
    "learning_rate_schedule": "flaxprune.training.config",
    "load_config_file": "flaxprune.training.config",
    "validate": "flaxprune.training.config",
    "load_initial_params": "flaxprune.training.init_from",
    "MetricsWriter": "flaxprune.training.metrics",
    "make_mesh": "flaxprune.training.sharding",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
