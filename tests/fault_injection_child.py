"""The run that ``fault_injection_test.py`` kills: one ``loop.train`` of a tiny config, in its own process.

    python tests/fault_injection_child.py CONFIG_OVERRIDES_JSON WORKDIR

``CONFIG_OVERRIDES_JSON`` is ``tiny_lm_config``'s overrides as a JSON object
(``{"train.steps": 30, "data.data_dir": "/tmp/tfds"}``). The child speaks a
line protocol on stdout, so that the test can kill it at an exact point:

* ``step N`` after each update (from ``on_step``, before that step's
  checkpoint), and ``reduced`` at the end of the run, just before the
  reduced model is written; after either the child waits for one line on
  stdin before it goes on, so a test that kills it instead of answering kills
  it at that point exactly. End of input (a closed stdin) means "go on" for
  every later pause.
* ``log LINE`` for each line the loop logs ("... is damaged ...", "resumed from step N").
* ``done {"status": ...}`` when ``train`` returns.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # tiny_runs, as pytest finds it

from flaxprune.training import finalize, loop  # noqa: E402

from tiny_runs import tiny_lm_config  # noqa: E402


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(overrides_json: str, workdir: str) -> None:
    config = tiny_lm_config(**json.loads(overrides_json))
    stdin = {"open": True}

    def pause(line: str) -> None:
        _say(line)
        if stdin["open"] and not sys.stdin.readline():
            stdin["open"] = False  # stdin closed: run on without waiting

    def on_step(step: int) -> None:
        pause(f"step {step}")

    save_reduced = finalize.save_reduced

    def pausing_save_reduced(*args, **kwargs):
        pause("reduced")  # the loop has no hook there; the test kills at or during this write
        return save_reduced(*args, **kwargs)

    finalize.save_reduced = pausing_save_reduced

    def log(text: str) -> None:
        for line in str(text).splitlines() or [""]:
            _say(f"log {line}")

    summary = loop.train(config, workdir, on_step=on_step, log=log, progress=False)
    _say("done " + json.dumps({"status": summary["status"], "step": summary.get("step")}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} CONFIG_OVERRIDES_JSON WORKDIR")
    main(sys.argv[1], sys.argv[2])
