"""What the training loop needs from a kind of experiment, and the builder that picks one.

The loop (:mod:`flaxprune.training.loop`) knows models only through a
:class:`Task`: language modeling (:mod:`flaxprune.training.lm_task`) carries
a recurrent state across batches and scores bits per token; GLUE
classification (:mod:`flaxprune.training.glue_task`) has no carry and scores
the task's GLUE metric. Everything else (the combined optimizer, the
Lagrangian, sharding, checkpoints, preemption, shrink) is shared. Each task's
builder lives in that task's file; :func:`build_task` picks one by
``config.task``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

__all__ = ["TASKS", "Task", "build_task"]

TASKS = ("lm", "glue")


class Task(Protocol):
    model: Any  # the Linen module being trained
    model_config: Any  # its frozen dataclass config (has `plan` and `gated`)
    score_name: str  # the validation metric that picks the best checkpoint, e.g. 'valid_bpc'
    higher_is_better: bool

    def init_params(self, key: jax.Array) -> Any:
        """Fresh params of the model."""

    def initial_params(self, fresh: Any) -> Any | None:
        """Pretrained params to start from (given the fresh ones, for heads and gates), or None."""

    def initial_carry(self, batch_size: int) -> Any:
        """State carried from batch to batch (batch-leading arrays); ``{}`` when there is none."""

    def train_batches(self, process_index: int, process_count: int) -> Any:
        """An endless iterator of host-local batches (dicts of numpy arrays) with ``state()``/``restore()``."""

    def batch_spec(self) -> dict[str, bool]:
        """For each batch entry: True if it is split along the batch axis, False if replicated."""

    def loss(self, params: Any, batch: dict, carry: Any, rngs: dict) -> tuple[jax.Array, tuple[dict, Any]]:
        """``(loss, (metrics, new_carry))`` in training mode (traced inside the jitted step)."""

    def evaluate(self, params: Any, split: str) -> dict[str, float]:
        """Metrics of ``split`` ('valid' or 'test') with deterministic masks; 'valid' includes ``score_name``."""

    def speed_inputs(self) -> tuple:
        """Positional inputs of ``model.apply`` for timing inference."""

    def with_model(self, model: Any, model_config: Any) -> "Task":
        """The same task around another model (the reduced one)."""


def build_task(config: Any, mesh: Any) -> Task:
    """The task of ``config.task`` (default ``'lm'``), with its data loaded and its model built.

    The task modules are imported here, on first use: a language model run
    never imports the GLUE tokenizer, and the reverse.

    Raises:
      ValueError: for an unknown task or model field; FileNotFoundError for missing data.
    """
    name = config.get("task", "lm")
    if name == "lm":
        from flaxprune.training.lm_task import build_lm_task

        return build_lm_task(config, mesh)
    if name == "glue":
        from flaxprune.training.glue_task import build_glue_task

        return build_glue_task(config, mesh)
    raise ValueError(f"config.task={name!r} is not a task; accepted: {list(TASKS)}.")
