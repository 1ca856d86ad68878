"""One process of ``multihost_test.py``'s runs: a tiny SRU through the real ``loop.train``.

    python tests/multihost_child.py host OVERRIDES_JSON WORKDIR OUT [SIGTERM_AT]
    python tests/multihost_child.py reference OVERRIDES_JSON WORKDIR OUT

``OVERRIDES_JSON`` is ``tiny_lm_config``'s overrides as a JSON object.

* ``host``: one of several processes. The test sets ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read by
  ``sharding.initialize_distributed``, as ``flaxprune train`` reads them) and
  ``XLA_FLAGS`` for 4 CPU devices; the child turns on gloo CPU collectives.
  Before training it checks that its batcher's rows are its own block of the
  global batch and that ``put_batch`` assembles the one-process global batch. With
  ``SIGTERM_AT``, process 1 sends itself SIGTERM after that step, and from then on
  every host waits 0.5 s a step (a step as long as a real one, so the hosts agree
  on a stop before the run ends).
* ``reference``: the same config in one process on all its devices (8). It
  prints ``DATA READY`` once it has prepared the data (the hosts may start then).

Each prints one ``RESULT {json}`` line: the process, how ``train`` ended, its
batch rows, the lines it logged; a finished run's process 0 writes the final
checkpoint's params to ``OUT`` (``.npz``, one array per leaf path). A finished
``host`` run then writes its reduced model again over itself on every host (the
end of a run repeated after a SIGTERM during it) and checks that it reloads.
"""

import json
import os
import pathlib
import signal
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # tiny_runs, as pytest finds it

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from flaxprune.training import loop, runs, sharding  # noqa: E402
from flaxprune.training.checkpoint import load_reduced, save_reduced  # noqa: E402
from flaxprune.training.run_dir import RunFiles  # noqa: E402

from tiny_runs import tiny_lm_config  # noqa: E402

SLOW_STEP_S = 0.5  # after the SIGTERM: the JAX preemption service takes a few tenths of a second to agree


def check_rows(config, workdir) -> list[int]:
    """This process's rows of the global batch; asserts they are its own block and that they assemble right."""
    run = loop.prepare(config, workdir)  # joins the job first, as `flaxprune train` does (initialize_distributed)
    index, count = jax.process_index(), jax.process_count()
    assert count == 2 and jax.device_count() == 8 and jax.local_device_count() == 4, (count, jax.devices())
    local = next(run.task.train_batches(index, count))["x"]  # [batch / count, seq_len]
    whole = next(run.task.train_batches(0, 1))["x"]  # [batch, seq_len]: what one process would read
    rows = list(range(index * len(local), (index + 1) * len(local)))
    np.testing.assert_array_equal(local, whole[rows])
    assembled = sharding.put_batch(local, run.mesh)
    assert assembled.shape == whole.shape and not assembled.is_fully_addressable, assembled.sharding
    np.testing.assert_array_equal(multihost_utils.process_allgather(assembled, tiled=True), whole)
    return rows


def save_params(workdir, out) -> None:
    _, params, _, step = runs.load_run(workdir)
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    np.savez(out, **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}, step=step)


def repeat_the_end(workdir) -> None:
    """Writes the run's reduced model again over itself on every host, as the rerun of an interrupted end does."""
    reduced = RunFiles(workdir).reduced
    _, params, config = load_reduced(reduced)
    save_reduced(reduced, params, config, overwrite=True)  # every host: one moves the files, all write
    _, again, _ = load_reduced(reduced)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def main(mode: str, overrides_json: str, workdir: str, out: str, sigterm_at: str = "0") -> None:
    config = tiny_lm_config(**json.loads(overrides_json))
    sigterm_at = int(sigterm_at)
    rows = []
    if mode == "host":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        rows = check_rows(config, workdir)
    else:
        assert jax.process_count() == 1 and jax.device_count() == 8, jax.devices()
        loop.prepare(config, workdir)  # prepares the data, which the hosts then read
        print("DATA READY", flush=True)

    def on_step(step: int) -> None:
        if sigterm_at and step == sigterm_at and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # one host only: the others hear of it from JAX's service
        if sigterm_at and step >= sigterm_at:
            time.sleep(SLOW_STEP_S)

    logged = []
    summary = loop.train(config, workdir, on_step=on_step, log=logged.append, progress=False)
    if summary["status"] == "done":
        if jax.process_index() == 0:
            save_params(workdir, out)
        else:
            runs.load_run(workdir)  # every process reads it (orbax's barriers), process 0 writes the file
        if mode == "host":
            repeat_the_end(workdir)
    result = {"process": jax.process_index(), "status": summary["status"], "step": summary["step"]}
    result.update(rows=rows, logs=[str(line) for line in logged])
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
