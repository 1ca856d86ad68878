"""Compaction inside a run: the training state of a compacted model, and the state target of any model config.

Every ``prune.compact_every`` steps the loop drops the components whose
``P(z != 0)`` is below ``prune.compact_threshold`` (:mod:`flaxprune.compaction`)
from the params and the optimizer state, and trains on with the compacted
model's task (a new plan, new static shapes, a recompiled step). Checkpoints
then hold states of different shapes: each one's metadata records the model
config it was saved with (``train_model_config``), and a restore builds its
target from that (:func:`target_for_meta`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from flaxprune.compaction import Compaction, compaction
from flaxprune.models import model_for
from flaxprune.training.checkpoint import model_config_from_json
from flaxprune.training.state import TrainState, abstract_target, initial_state_fn, state_shardings

__all__ = ["TRAIN_MODEL_KEY", "compact_state", "describe", "state_target", "target_for_meta", "task_for"]

TRAIN_MODEL_KEY = "train_model_config"  # checkpoint meta: the (possibly compacted) model config the state is of


def task_for(task: Any, model_config: Any) -> Any:
    """``task`` around the model that ``model_config`` builds (``task`` itself for its own config)."""
    if model_config == task.model_config:
        return task
    return task.with_model(model_for(model_config), model_config)


def state_target(task: Any, tx: Any, config: Any, mesh: Any) -> TrainState:
    """The abstract training state (shapes, dtypes, shardings) of ``task``'s model: what a restore fills."""
    abstract = jax.eval_shape(initial_state_fn(task, tx, config.train.seed, config.train.batch_size))
    return abstract_target(abstract, state_shardings(abstract, mesh))


def train_model_config(meta: dict[str, Any]) -> Any:
    """The model config a checkpoint's state is of (its run's model config when it predates compaction)."""
    return model_config_from_json(meta.get(TRAIN_MODEL_KEY, meta["model_config"]))


def target_for_meta(task: Any, tx: Any, config: Any, mesh: Any) -> Callable[[dict[str, Any]], TrainState]:
    """For :meth:`CheckpointStore.restore`: a checkpoint's metadata -> the target of its state."""

    def target(meta: dict[str, Any]) -> TrainState:
        return state_target(task_for(task, train_model_config(meta)), tx, config, mesh)

    return target


def compact_state(
    state: TrainState, task: Any, tx: Any, config: Any, mesh: Any, threshold: float
) -> tuple[TrainState, Any, Compaction]:
    """``(state, task, compaction)`` after dropping the components with ``P(z != 0) < threshold``.

    When nothing is dropped, ``state`` and ``task`` come back as they are.
    The new state is put on the mesh with the compacted model's shardings;
    the carried hidden state and everything else outside the params'
    mirrors are kept as they are.

    Raises:
      RuntimeError: if the cut state does not have the compacted model's
        structure (an optimizer state that holds param-shaped arrays under
        other names), naming both.
    """
    cut = compaction(state.params, task.model_config, threshold=threshold)
    if not cut.dropped:
        return state, task, cut
    new_task = task_for(task, cut.config)
    target = state_target(new_task, tx, config, mesh)
    new_state = state.replace(
        trainable=cut.apply(state.trainable, prefix=("params",)),
        opt_state=cut.apply(state.opt_state, prefix=("params",)),
    )
    got = jax.tree.map(lambda a: tuple(a.shape), new_state)
    want = jax.tree.map(lambda a: tuple(a.shape), target)
    if jax.tree.structure(new_state) != jax.tree.structure(target) or got != want:
        raise RuntimeError(
            "compaction: the cut training state does not match the compacted model's "
            f"({jax.tree.structure(new_state)} vs {jax.tree.structure(target)}); set config.prune.compact_every=0."
        )
    shardings = jax.tree.map(lambda t: t.sharding, target)
    return jax.device_put(new_state, shardings), new_task, cut


def describe(cut: Compaction) -> str:
    """``'layers_1/W 256 -> 120, ...'``."""
    return ", ".join(f"{path} {before} -> {after}" for path, (before, after) in sorted(cut.dropped.items()))
