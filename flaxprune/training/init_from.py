"""Warm starts: begin pruning from a pretrained dense or factorized checkpoint."""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp

from flaxprune.surgery import factorize_params

__all__ = ["load_initial_params"]


def load_initial_params(source: str | pathlib.Path, twin_params: Any) -> Any:
    """Params for a new run from an earlier run's checkpoint.

    ``source`` is an earlier run's workdir (its newest checkpoint is used) or
    a checkpoint directory. Factorized weights (``P``, ``Q``) are copied;
    dense kernels are factorized by SVD to the new model's ranks
    (:func:`flaxprune.factorize_params`); gates keep their fresh values.

    Raises:
      FileNotFoundError: if there is no checkpoint at ``source``.
      ValueError: if the two models' params do not correspond.
    """
    path = pathlib.Path(source).absolute()
    for candidate in (path / "best", path / "checkpoints", path):
        if candidate.is_dir():
            manager = ocp.CheckpointManager(candidate)
            step = manager.latest_step()
            if step is not None:
                restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
                manager.close()
                params = restored["state"]["trainable"]["params"]
                return factorize_params(_drop_gates(params), twin_params)
            manager.close()
    raise FileNotFoundError(f"init_from: no checkpoint under {path} (looked in best/, checkpoints/ and the folder).")


def _drop_gates(tree: Any) -> Any:
    """The source's gates are not carried over: the new run's gates start fresh."""
    if not isinstance(tree, dict):
        return tree
    return {k: _drop_gates(v) for k, v in tree.items() if not str(k).startswith("log_alpha")}
