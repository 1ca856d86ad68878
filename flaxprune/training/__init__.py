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
* ``checkpoint``: the only code that uses orbax, checksummed and allow-listed:
  :class:`CheckpointStore`, :func:`save_reduced`, :func:`load_reduced`;
  ``run_dir``: the run directory's files (:class:`RunFiles`), its lock and
  its config history; ``workdir_checks``: what a resume checks first;
* ``finalize``: the end of a run (shrink, reload, evaluate, time); ``runs``:
  evaluate, shrink and report a run directory (the ``flaxprune`` command);
* ``config``: config validation and the learning-rate schedules;
  ``init_from``: warm starts; ``metrics``: ``metrics.jsonl``.

Names are imported on first use, so ``from flaxprune.training import
sharding`` does not pay for orbax, tfds or the tokenizer.
"""

import lazy_loader

_LAZY = {  # submodule -> the names it gives, imported on first use
    "loop": ["NonFiniteLossError", "Run", "prepare", "train"],
    "task": ["TASKS", "Task", "build_task"],
    "lm_task": ["Evaluator", "LanguageModelingTask", "build_lm_task"],
    "glue_task": ["GlueTask", "build_glue_task"],
    "state": ["TrainState", "abstract_target", "init_state", "initial_state_fn", "state_shardings"],
    "steps": ["make_train_step"],
    "checkpoint": ["CheckpointStore", "DamagedCheckpointError", "load_reduced", "save_reduced"],
    "run_dir": ["RunFiles", "RunLock", "WorkdirInUseError"],
    "finalize": ["forward_call", "time_forward"],
    "runs": ["evaluate_run", "finished_summary", "load_run", "report_checkpoint", "shrink_run"],
    "config": ["learning_rate_schedule", "load_config_file", "validate"],
    "init_from": ["load_initial_params"],
    "metrics": ["MetricsWriter"],
    "sharding": ["make_mesh"],
}

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs=_LAZY)
