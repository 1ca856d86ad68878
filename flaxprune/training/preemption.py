"""What the loop watches while it trains: the SIGTERM flag (Cloud TPU preemption) and the throughput meter.

With several processes a SIGTERM may reach one host only, yet every host must
save the same step and stop together: one that trains on waits forever in the
next collective. JAX's preemption service (started by
``jax.distributed.initialize``, which hands it SIGTERM) spreads the notice and
picks that step, one past the furthest host's; asking it each step is a local
check, no collective, so a single-process run asks nothing at all.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["Preemption", "Throughput", "preemption_flag"]


class Preemption:
    """Whether the run should save and stop for a SIGTERM: the same answer, after the same step, on every host."""

    def __init__(self, agree: Callable[[int, bool], bool] | None = None):
        """``agree(step, signalled_here)``: the hosts' common answer (None: one process, the local flag is it)."""
        self.signalled = False  # this process caught SIGTERM (set by preemption_flag's handler)
        self._agree = agree
        self._step = 0
        self._stopping = False

    def stop(self, step: int | None = None) -> bool:
        """True from the step on which the run saves and stops (it stays true).

        Args:
          step: the step just done. With several processes every host asks after every
            step, with the same numbers; without it, one past the last asked (the end of a
            run asks between its stages).
        """
        self._step = self._step + 1 if step is None else step
        if not self._stopping:
            self._stopping = self.signalled if self._agree is None else self._agree(self._step, self.signalled)
        return self._stopping


@contextlib.contextmanager
def preemption_flag():
    """Yields a :class:`Preemption` set by SIGTERM (Cloud TPU preemption) instead of dying mid-step.

    One process: a handler sets ``signalled``. Several: JAX's preemption service owns SIGTERM
    and the hosts agree on the step (its own handler is left in place); with the service off,
    a handler here sets the flag that the hosts gather.
    """
    several = jax.process_count() > 1
    uses_service = several and jax.config.jax_enable_preemption_service
    if uses_service:
        flag = Preemption(lambda step, _: multihost_utils.reached_preemption_sync_point(step))
    elif several:  # the service is off (jax_enable_preemption_service=False): gather every flag, a host sync
        flag = Preemption(lambda _, signalled: bool(np.any(multihost_utils.process_allgather(np.asarray(signalled)))))
    else:
        flag = Preemption()

    def handler(signum, frame):
        flag.signalled = True

    previous = None
    if not uses_service:
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
