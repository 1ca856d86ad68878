"""Timing for the speed suite: variants interleaved, medians and spread, compile time, page faults.

Used by :mod:`flaxprune.benchmark` (and the experiment scripts that time a
step): every call's outputs are waited for with ``jax.block_until_ready``,
and the compared callables are timed ``A B C A B C ...`` in one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

try:
    import resource
except ImportError:  # Windows
    resource = None

__all__ = ["compile_timed", "summarize", "time_interleaved"]


def time_interleaved(
    calls: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    min_seconds: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """Times each callable, interleaved: ``warmup`` calls of each, then ``A B C A B C ...`` for ``repeats`` rounds.

    Every call's outputs are waited for (``jax.block_until_ready``) inside the
    timed region. The last warm-up call sets ``number``, the calls per sample, so that a
    sample takes at least ``min_seconds``. The process's minor page faults are counted
    around each sample too: memory the allocator hands out fresh (the kernel zeroes each
    page on first touch) is time that the variant's own work does not explain.

    Returns:
      ``{name: {'samples': [seconds per call, one per round], 'number': calls per sample,
      'faults': [minor page faults per call, one per round]}}``.
    """
    numbers = {}
    for name, fn in calls.items():
        elapsed = 0.0
        for _ in range(warmup):
            start = clock()
            jax.block_until_ready(fn())
            elapsed = clock() - start
        numbers[name] = max(1, math.ceil(min_seconds / elapsed)) if min_seconds > 0 and elapsed > 0 else 1
    samples: dict[str, list[float]] = {name: [] for name in calls}
    faults: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            faults_before, start = _minor_faults(), clock()
            for _ in range(numbers[name]):
                jax.block_until_ready(fn())
            samples[name].append((clock() - start) / numbers[name])
            faults[name].append((_minor_faults() - faults_before) / numbers[name])
    return {name: {"samples": samples[name], "number": numbers[name], "faults": faults[name]} for name in calls}


def _minor_faults() -> int:
    """The process's minor page faults so far (0 where ``resource`` does not exist: Windows)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def summarize(samples: list[float]) -> dict[str, float]:
    """``median_s, p10_s, p90_s, min_s, max_s`` of the samples (seconds)."""
    x = np.asarray(samples, np.float64)
    p10, median, p90 = np.percentile(x, [10, 50, 90])
    return {"median_s": float(median), "p10_s": float(p10), "p90_s": float(p90), "min_s": float(x.min()),
            "max_s": float(x.max())}


def compile_timed(fn: Callable[..., Any], args: tuple, donate_argnums: tuple[int, ...] = ()) -> tuple[Any, dict]:
    """``jax.jit(fn).lower(*args).compile()``, and how long lowering and compiling took and XLA's memory estimate.

    Returns:
      ``(compiled, info)``: ``info`` holds ``lower_s``, ``compile_s`` (lowering + XLA compilation) and
      ``memory``: ``argument``, ``output``, ``temp``, ``alias`` bytes and ``total`` = argument + output + temp.
    """
    start = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    stats = compiled.memory_analysis()
    memory = {}
    if stats is not None:
        memory = {k: int(getattr(stats, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
        memory["total"] = memory["argument"] + memory["output"] + memory["temp"]
    return compiled, {"lower_s": lowered_at - start, "compile_s": done - start, "memory": memory}
