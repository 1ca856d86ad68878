"""Machine-readable metrics: one JSON object per line in the workdir."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
import numpy as np

from flaxprune.training.checkpoint import RunFiles

__all__ = ["MetricsWriter", "to_python"]


def to_python(metrics: dict[str, Any]) -> dict[str, Any]:
    """Device scalars to Python floats/ints (non-finite values as strings, which JSON allows)."""
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v).item() if hasattr(v, "shape") or isinstance(v, np.generic) else v
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        out[k] = v
    return out


class MetricsWriter:
    """Appends metrics to ``<workdir>/metrics.jsonl`` (only on process 0)."""

    def __init__(self, workdir: str | pathlib.Path):
        self.path = RunFiles(workdir).metrics
        self._active = jax.process_index() == 0

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if not self._active:
            return
        record = {"step": int(step), "kind": kind, **to_python(metrics)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
