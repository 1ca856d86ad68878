"""One jitted train step of an experiment config on a fixed batch, as a callable to time.

Shared by the experiment scripts that time training side by side in one
process (``enwik6.py``, ``compaction_speed.py``). The step is the run's own
(``make_train_step`` with the run's optimizer, Lagrangian and sparsity
reference); the params are fresh, since the time does not depend on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def train_step_call(config: Any, model_config: Any = None) -> Callable[[], Any]:
    """``call() -> metrics``: one step of ``config``'s run, its state threaded through (donated).

    Args:
      config: an LM experiment ConfigDict.
      model_config: the model to step (a compacted one's config); None: the model ``config`` builds.
    """
    import jax
    import jax.numpy as jnp

    import dataclasses

    from flaxprune.training import initial_state_fn, prepare
    from flaxprune.training.loop import run_train_step
    from flaxprune.training.state_compaction import task_for

    run = prepare(config, "/nonexistent")  # builds model, optimizer, data; writes nothing
    task = run.task if model_config is None else task_for(run.task, model_config)
    state = jax.jit(initial_state_fn(task, run.tx, config.train.seed, config.train.batch_size))()
    step = jax.jit(run_train_step(dataclasses.replace(run, task=task)), donate_argnums=0)
    b, t = config.train.batch_size, config.train.seq_len
    train = run.task.corpus.train
    batch = {"x": jnp.asarray(train[: b * t].reshape(b, t)), "y": jnp.asarray(train[1: b * t + 1].reshape(b, t)),
             "reset": jnp.asarray(False)}
    holder = [state]

    def call():
        holder[0], metrics = step(holder[0], batch)
        return metrics

    return call
