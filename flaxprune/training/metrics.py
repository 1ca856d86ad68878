"""Machine-readable metrics: one JSON object per line in the workdir."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
import numpy as np

from flaxprune.training.run_dir import RunFiles

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

    def start_at(self, step: int) -> None:
        """Drops the rows past ``step`` (an earlier attempt's, about to be logged again) and marks a resume.

        Called when a run starts: at step 0 (a fresh start) every row of an
        earlier attempt goes; on a resume the rows up to the restored step
        stay and one ``{"kind": "resume"}`` row says where the run continued.
        """
        if not self._active or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and _step_of(line) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        tmp.replace(self.path)  # atomic: a crash here leaves the old or the new file, never half of one
        if step > 0:
            self.write(step, "resume", {"dropped_rows": len(lines) - len(kept)})

    def write(self, step: int, kind: str, metrics: dict[str, Any]) -> None:
        if not self._active:
            return
        record = {"step": int(step), "kind": kind, **to_python(metrics)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # an unreadable row (a torn write) goes with the rows past the restart
