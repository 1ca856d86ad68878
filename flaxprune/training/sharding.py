"""Data-parallel sharding by names: a ``data`` mesh axis, batch split along it.

Params and optimizer state are replicated; batches and the recurrent state
(whose leading axis is batch) are split along ``data``. ``jax.jit`` with
these shardings replaces pjit. With several processes (a multi-host TPU
slice, a GPU cluster, processes on one machine: :func:`initialize_distributed`)
each process feeds its own rows of the global batch (:func:`put_batch`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "batch_sharding",
    "carry_sharding",
    "check_divisible",
    "initialize_distributed",
    "make_mesh",
    "put_batch",
    "replicated",
]

DATA_AXIS = "data"


COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0's coordinator (JAX's own variable)
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"  # explicit settings: how many processes the job has
PROCESS_ID_ENV = "JAX_PROCESS_ID"  # and which one this is, in [0, JAX_NUM_PROCESSES)


def _env_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer (see initialize_distributed).") from None


def initialize_distributed() -> None:
    """Joins a multi-process job before anything runs on a device; a no-op for a single process.

    The same ``flaxprune train`` command line serves every setting:

    * a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` names several workers):
      JAX detects everything;
    * explicit settings, for localhost or a GPU cluster: ``JAX_COORDINATOR_ADDRESS``
      (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
      (each process its own);
    * ``JAX_COORDINATOR_ADDRESS`` alone under a scheduler JAX knows (SLURM, Open MPI,
      Kubernetes), which supplies the rest.

    Calling it again in an initialized process (a second run) does nothing.

    Raises:
      ValueError: when only one of ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` is set,
        they are set without ``JAX_COORDINATOR_ADDRESS``, or either is not an integer.
    """
    if jax.distributed.is_initialized():
        return
    address = os.environ.get(COORDINATOR_ENV)
    count, index = os.environ.get(NUM_PROCESSES_ENV), os.environ.get(PROCESS_ID_ENV)
    if (count is None) != (index is None) or (count is not None and not address):
        given = ", ".join(f"{k}={os.environ[k]!r}" for k in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
                          if k in os.environ)
        raise ValueError(
            f"explicit multi-process settings need all three of {COORDINATOR_ENV} (host:port of process 0), "
            f"{NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}; got {given}. Set all three, or none on a TPU slice."
        )
    if count is not None:
        jax.distributed.initialize(address, _env_int(NUM_PROCESSES_ENV, count), _env_int(PROCESS_ID_ENV, index))
        return
    multi_host_tpu = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    if multi_host_tpu or address:
        jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over ``num_devices`` (default: all) devices with axis ``data`` (Auto axis type)."""
    devices = jax.devices()
    if num_devices is not None and jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(
            f"make_mesh: num_devices={num_devices} with {jax.process_count()} processes; a multi-process run uses "
            f"every device ({len(devices)}), so that each process feeds its own: set config.train.num_devices=0."
        )
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"make_mesh: num_devices={num_devices} must be in [1, {len(devices)}] (devices present).")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along ``data``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(name: str, value: int, mesh: Mesh) -> None:
    """Raises a ValueError unless ``value`` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if value % n:
        raise ValueError(
            f"{name}={value} is not divisible by the number of devices ({n}); choose a multiple of {n} "
            "so every device gets the same number of streams."
        )


def put_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles this process's rows ``[local_batch, ...]`` into the global, batch-sharded array.

    The local rows go to the part of the ``data`` axis this process's devices hold. Where
    the mesh lists each process's devices together in process order (CPU, GPU; checked by
    ``tests/training/multihost_test.py``), process ``p`` holds global rows
    ``p * local_batch ..``, the very rows its batcher reads; any other device order only
    permutes the rows (the same rows reach the same device every step, so a carried
    state stays with its stream).
    """
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))


def carry_sharding(carry: Any, mesh: Mesh) -> Any:
    """Shardings for a batch-leading recurrent state (scalars replicated)."""
    return jax.tree.map(lambda x: batch_sharding(mesh) if np.ndim(x) else replicated(mesh), carry)
