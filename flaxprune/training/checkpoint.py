"""Atomic orbax checkpoints of the training state, its data position and its model config.

orbax writes each step to a temporary directory and renames it when complete,
so an interruption never leaves a half-written checkpoint that looks valid.
The state is restored against an abstract target (``jax.eval_shape`` of a
fresh state) with the run's shardings: that is what brings optax's
NamedTuple states back as NamedTuples, and puts every array on the mesh.
"""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp

__all__ = ["CheckpointStore"]


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

