"""The files of a run, and the one module that reads and writes them with orbax.

A run directory (``--workdir``) holds::

    config.json     the experiment config of the run
    metrics.jsonl   one JSON object per logged step (train and eval)
    checkpoints/    keep-N training states (state pytree + JSON meta: the
                    model config, the data position, the best score)
    best/           the best state so far (FLOP's rule, see the loop)
    reduced/        the shrunk model: params + its model config as JSON
    summary.json    the end-of-run summary

:class:`RunFiles` names these paths; :class:`CheckpointStore` (training
states), :func:`save_reduced` / :func:`load_reduced` (a reduced model) and
:func:`read_latest` (a checkpoint restored as saved, without a target) are
the only code that touches orbax.

orbax writes each step to a temporary directory and renames it when
complete, so an interruption never leaves a half-written checkpoint that
looks valid. A training state is restored against an abstract target
(``jax.eval_shape`` of a fresh state) with the run's shardings: that is what
brings optax's NamedTuple states back as NamedTuples, and puts every array
on the mesh.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from flaxprune.models import CONFIG_CLASSES, model_for
from flaxprune.serialization import config_from_json, config_to_json

__all__ = [
    "CheckpointStore",
    "RunFiles",
    "load_reduced",
    "model_config_from_json",
    "read_latest",
    "save_reduced",
]


class RunFiles:
    """The paths inside one run directory (nothing is created)."""

    def __init__(self, workdir: str | pathlib.Path):
        self.workdir = pathlib.Path(workdir).absolute()

    @property
    def config(self) -> pathlib.Path:
        return self.workdir / "config.json"

    @property
    def metrics(self) -> pathlib.Path:
        return self.workdir / "metrics.jsonl"

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.workdir / "checkpoints"

    @property
    def best(self) -> pathlib.Path:
        return self.workdir / "best"

    @property
    def reduced(self) -> pathlib.Path:
        return self.workdir / "reduced"

    @property
    def summary(self) -> pathlib.Path:
        return self.workdir / "summary.json"


class CheckpointStore:
    """Keep-N checkpoints under ``directory``: a state pytree plus JSON metadata."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"CheckpointStore: keep={keep} must be >= 1.")
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves and waits until the checkpoint is complete on disk.

        A checkpoint of the same step left by an earlier attempt that crashed
        before its next regular checkpoint (so the run restarted from further
        back) is replaced: the run is deterministic, so it holds the same state.
        """
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``(state, meta)``; ``abstract_state`` carries shapes, dtypes and shardings."""
        step = self.latest_step() if step is None else step
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return out["state"], dict(out["meta"])

    def close(self) -> None:
        self._manager.close()


def read_latest(directory: str | pathlib.Path, with_meta: bool = True) -> tuple[Any, dict[str, Any], int] | None:
    """``(state tree, meta, step)`` of the newest checkpoint in ``directory`` as saved, or None if there is none.

    Without a target, the state comes back as nested dicts of host arrays
    (NamedTuples as dicts): enough to read params, not to resume a run.
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(directory)
    try:
        step = manager.latest_step()
        if step is None:
            return None
        args = {"state": ocp.args.StandardRestore()}
        if with_meta:
            args["meta"] = ocp.args.JsonRestore()
        out = manager.restore(step, args=ocp.args.Composite(**args))
    finally:
        manager.close()
    return out["state"], dict(out["meta"]) if with_meta else {}, int(step)


def model_config_from_json(text: str) -> Any:
    """A model config saved in a checkpoint's meta, rebuilt from the known config classes only.

    Loading never runs code: only :data:`flaxprune.models.CONFIG_CLASSES`
    (the model configs, ``Plan``, ``GateConfig``, the layer specs) are
    rebuilt, each through its own validation.

    Raises:
      ValueError: for any other class, an unknown field or an invalid value.
    """
    return config_from_json(text, CONFIG_CLASSES)


def save_reduced(directory: str | pathlib.Path, params: Any, config: Any) -> None:
    """Saves a model's params and its config (JSON) as one orbax checkpoint; reloads without the original config."""
    store = CheckpointStore(directory, keep=1)
    store.save(0, jax.device_get(params), {"model_config": config_to_json(config)})
    store.close()


def load_reduced(directory: str | pathlib.Path) -> tuple[Any, Any, Any]:
    """``(model, params, config)`` from :func:`save_reduced`'s directory.

    The params come back with the shapes they were saved with; the config
    (with its plan) builds the module that takes them.

    Raises:
      FileNotFoundError: if there is no saved model there.
    """
    found = read_latest(directory)
    if found is None:
        raise FileNotFoundError(f"load_reduced: no saved model under {pathlib.Path(directory).absolute()}.")
    params, meta, _ = found
    config = model_config_from_json(meta["model_config"])
    return model_for(config), params, config
