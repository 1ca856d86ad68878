"""What a run is before it writes anything: :class:`Run`, built and checked from a config by :func:`prepare`.

``prepare`` validates the config, builds the mesh, the task (and a
distilling run's teacher), checks an existing checkpoint's model and config
against them, and builds the optimizer and the target schedule; nothing is
written. :mod:`flaxprune.training.loop` trains a ``Run``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax

from flaxprune.lagrangian import flop_optimizer, target_schedule
from flaxprune.serialization import config_to_json
from flaxprune.size import hard_sparsity, open_sparsity, prunable_params
from flaxprune.training import sharding
from flaxprune.training.config import (
    learning_rate_schedule,
    multiplier_control,
    sparsity_basis,
    validate,
    with_resolved_defaults,
)
from flaxprune.training.distill import check_teacher_record, prepare_distillation
from flaxprune.training.prune_method import (
    agp_target_fn,
    agp_wrapper,
    reference_measure,
    uses_agp,
    uses_lagrangian,
)
from flaxprune.training.run_dir import RunFiles
from flaxprune.training.task import build_task
from flaxprune.training.workdir_checks import check_config_change, check_existing_checkpoint, check_workdir

__all__ = ["NonFiniteLossError", "Run", "build_optimizer", "prepare", "target_fn_of"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
    """Everything built from a config, before any file is written."""

    config: Any
    workdir: pathlib.Path
    task: Any
    mesh: Any
    tx: Any
    lr_fn: Callable
    target_fn: Callable
    model_json: str
    config_changes: dict[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)  # accepted on a resume
    prunable: int | None = None  # the model's prunable count at its full shapes: what every sparsity divides by
    full_task: Any = None  # the task around the model at its full shapes (``task`` is compacted from it)
    teacher: Any = None  # a distilling run's flaxprune.training.distill.Teacher (its params: the step's argument)

    @property
    def prune(self) -> bool:
        """Whether the run prunes, by any method."""
        return bool(self.config.prune.enabled)

    @property
    def gated(self) -> bool:
        """Whether the run trains gates under the Lagrangian (``flop``, ``l0``, ``l0_block``); else AGP or none."""
        return uses_lagrangian(self.config)

    def reference_sparsity(self, params: Any) -> float | None:
        """The dense reference's sparsity (:mod:`flaxprune.dense_reference`), for a model that declares it."""
        measure = reference_measure(self.model_config)
        return None if measure is None else float(measure[0](params))

    def hard_sparsity(self, params: Any) -> float:
        """The sparsity the run is held to: the eval masks' (gated methods) or the weights' zeros (AGP)."""
        if self.gated:
            return float(hard_sparsity(params, self.model_config.plan.gate, self.basis, reference=self.prunable))
        return float(self.reference_sparsity(params))

    @property
    def basis(self) -> str:
        """The sparsity basis (:mod:`flaxprune.size`): ``'factors'`` or ``'dense'``."""
        return sparsity_basis(self.config)

    @property
    def model_config(self) -> Any:
        return self.task.model_config


def prepare(config: Any, workdir: str | pathlib.Path, *, allow_config_change: bool = False) -> Run:
    """Validates the config and builds data, model, mesh and optimizer; writes nothing.

    Args:
      config: the experiment ConfigDict.
      workdir: the run directory (new, or a run's to resume).
      allow_config_change: resume a run whose ``config.json`` differs from
        ``config`` (outside the model, which must match); the change is
        recorded in ``config_history.jsonl``. Without it such a resume is refused.

    Raises:
      ValueError / FileNotFoundError / FileExistsError / NotADirectoryError: on
        a bad config field, a missing or empty data file, a batch that does not
        split over the devices, a workdir that is a file or whose ``reduced/``
        holds something else, a checkpoint from a different model config, or a
        changed config on a resume.
    """
    validate(config)
    config = with_resolved_defaults(config)  # config.json says which controller ran
    workdir = pathlib.Path(workdir)
    check_workdir(workdir)
    sharding.initialize_distributed()
    mesh = sharding.make_mesh(config.train.num_devices or None)
    sharding.check_divisible("config.train.batch_size", config.train.batch_size, mesh)
    sharding.check_divisible("config.train.eval_batch_size", config.train.eval_batch_size, mesh)
    task = build_task(config, mesh)
    task, teacher = prepare_distillation(config, workdir, task, mesh)  # (task, None) without config.distill.teacher
    model_json = config_to_json(task.model_config)
    changes = {}
    if check_existing_checkpoint(RunFiles(workdir).checkpoints, config, task.model_config):
        changes = check_config_change(workdir, config, allow_config_change)
        check_teacher_record(RunFiles(workdir).checkpoints, teacher, config.train.keep_checkpoints)
    lr_fn = learning_rate_schedule(config.optim, config.train.steps)
    tx = build_optimizer(config.optim, lr_fn, agp_wrapper(config, task.model_config))
    target_fn = target_fn_of(config, task)
    prunable = None
    if uses_lagrangian(config):
        prunable = prunable_params(jax.eval_shape(task.init_params, jax.random.key(0)), sparsity_basis(config))
    elif uses_agp(config):
        prunable = reference_measure(task.model_config)[1]
    return Run(config, workdir, task, mesh, tx, lr_fn, target_fn, model_json, changes, prunable, task, teacher)


def build_optimizer(optim: Any, lr_fn: Callable, wrap_weights: Callable | None = None) -> Any:
    """FLOP's combined optimizer: weights on the schedule (AGP's masks around them in an AGP run), gates at
    their own rate, multipliers by ``optim.multiplier_update`` (PI control, or FLOP's Adam ascent)."""
    update, setting = multiplier_control(optim)
    return flop_optimizer(
        lr_fn,
        optim.gate_learning_rate,
        setting if update == "adam" else None,
        multiplier_control=setting if update == "pi" else None,
        clip_norm=optim.clip_norm or None,
        weight_decay=optim.weight_decay,
        wrap_weights=wrap_weights,
    )


def target_fn_of(config: Any, task: Any) -> Callable[[Any], Any]:
    """The target sparsity by step: a ramp from the model's start (every gate open) to ``prune.target``.

    The start needs only the params' shapes. With ``prune.constraint='hard'`` the held sparsity moves from the
    expected one to the hard one along the same ramp, so both start at the expected sparsity of the open model.
    An unpruned run has no penalty; its target is only logged. An AGP run's target is its cubic schedule.
    """
    if uses_agp(config):
        return agp_target_fn(config)
    if not config.prune.enabled:
        return target_schedule(0.0, 0)
    shapes = jax.eval_shape(task.init_params, jax.random.key(0))
    start = open_sparsity(shapes, sparsity_basis(config))
    return target_schedule(config.prune.target, config.prune.target_warmup, start=start)
