"""What the loop watches while it trains: the SIGTERM flag (Cloud TPU preemption) and the throughput meter."""

from __future__ import annotations

import contextlib
import signal
import time

__all__ = ["Throughput", "preemption_flag"]


@contextlib.contextmanager
def preemption_flag():
    """Sets ``flag['stop']`` on SIGTERM (Cloud TPU preemption) instead of dying mid-step."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, but still a flag
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Throughput:
    """Examples per second between two logged steps."""

    def __init__(self, step: int, examples_per_step: int):
        self._t, self._step, self._per = time.perf_counter(), step, examples_per_step
        self.rate = float("nan")

    def tick(self, step: int) -> float:
        now = time.perf_counter()
        self.rate = (step - self._step) * self._per / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        return self.rate
