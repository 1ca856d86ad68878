"""flaxprune.host_memory: after keep_freed_memory, calls of a jitted function stop page-faulting their temporaries."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from flaxprune import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A jitted function whose temporaries are 72 MB (a [3000, 3000] product and its reverse; above glibc's largest mmap
# threshold, 32 MiB), in a fresh process (the setting is process-wide): the median page faults of calls 20-40. With
# the setting, calls still fault while the heap grows to its steady size (small blocks land in freed large ones):
# measured, during the first 20-40 calls.
PROBE = textwrap.dedent(
    """
    import resource, sys
    from flaxprune.host_memory import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: ((y := jnp.sin(x) @ jnp.cos(x).T) * y[::-1]).sum())
    x = jnp.ones((3000, 200), jnp.float32)
    temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
    faults = []
    for _ in range(40):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(f(x))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, temp, sorted(faults[20:])[10])
    """
)


def _median_faults_per_call(mode: str) -> tuple[str, float, float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(host_memory.ENV, None)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    applied, temp, faults = out.stdout.split()
    return applied, int(temp) / 4096, float(faults)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's mallopt")
def test_kept_memory_stops_the_page_faults_of_every_call():
    applied, pages, kept = _median_faults_per_call("keep")  # pages: of the temporaries
    _, _, default = _median_faults_per_call("default")
    assert pages > 40e6 / 4096, pages  # XLA kept the [3000, 3000] product and its reversed copy as temporaries
    assert applied == "True"
    assert default > 0.5 * pages, default  # the problem the setting fixes is there without it
    assert kept < 0.05 * pages, kept


def test_is_kept_says_what_was_applied(monkeypatch):
    monkeypatch.setattr(host_memory, "_APPLIED", [])
    monkeypatch.setenv(host_memory.ENV, "0")
    assert host_memory.keep_freed_memory() is False and host_memory.is_kept() is False


def test_the_environment_variable_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "0")
    assert host_memory.keep_freed_memory() is False
