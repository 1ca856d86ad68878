"""Warm starts: begin pruning from a pretrained dense or factorized checkpoint."""

from __future__ import annotations

import pathlib
from typing import Any

from flax import traverse_util

from flaxprune.gates import is_gate_param
from flaxprune.surgery import factorize_params
from flaxprune.training.checkpoint import read_latest
from flaxprune.training.run_dir import RunFiles

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
    files = RunFiles(path)
    for candidate in (files.best, files.checkpoints, path):
        found = read_latest(candidate, with_meta=False)
        if found is not None:
            params = found[0]["trainable"]["params"]
            return factorize_params(_drop_gates(params), twin_params)
    raise FileNotFoundError(f"init_from: no checkpoint under {path} (looked in best/, checkpoints/ and the folder).")


def _drop_gates(params: Any) -> Any:
    """The source's gates are not carried over: the new run's gates start fresh."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not is_gate_param(k[-1])})
