"""Data-parallel sharding by names: a ``data`` mesh axis, batch split along it.

Params and optimizer state are replicated; batches and the recurrent state
(whose leading axis is batch) are split along ``data``. ``jax.jit`` with
these shardings replaces pjit. On a multi-host TPU slice each process feeds
its own rows of the global batch.
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


def initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` on a multi-host TPU slice (a no-op elsewhere)."""
    multi_host_tpu = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    if multi_host_tpu or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over ``num_devices`` (default: all) devices with axis ``data`` (Auto axis type)."""
    devices = jax.devices()
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
    """Assembles this process's rows ``[local_batch, ...]`` into the global, batch-sharded array."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))


def carry_sharding(carry: Any, mesh: Mesh) -> Any:
    """Shardings for a batch-leading recurrent state (scalars replicated)."""
    return jax.tree.map(lambda x: batch_sharding(mesh) if np.ndim(x) else replicated(mesh), carry)
