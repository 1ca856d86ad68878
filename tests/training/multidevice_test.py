"""Data parallelism: 8 CPU devices give the single-device result (run in a subprocess)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from tiny_runs import tiny_lm_config
    from flaxprune.training import loop, runs
    assert jax.device_count() == 8, jax.devices()
    params = {{}}
    for n in (1, 8):
        cfg = tiny_lm_config(**{{"data.data_dir": {data!r}, "train.num_devices": n, "train.steps": 4,
                                "train.batch_size": 8, "train.eval_batch_size": 8}})
        summary = loop.train(cfg, {work!r} + f"/{{n}}", log=lambda _: None, progress=False)
        params[n] = runs.load_run({work!r} + f"/{{n}}")[1]
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[8])))
    print("MAXDIFF", diff)
    try:
        loop.prepare(tiny_lm_config(**{{"data.data_dir": {data!r}, "train.batch_size": 12}}), {work!r} + "/bad")
    except ValueError as e:
        print("ERROR", e)
    """
)


def test_eight_devices_match_one(tmp_path):
    script = SCRIPT.format(tests=str(ROOT / "tests"), data=str(tmp_path / "tfds"), work=str(tmp_path))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    diff = float(out.stdout.split("MAXDIFF")[1].split()[0])
    assert diff <= 1e-5
    assert "config.train.batch_size=12 is not divisible by the number of devices (8)" in out.stdout
