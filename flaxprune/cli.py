"""The ``flaxprune`` console command.

    flaxprune train  --config=experiments/configs/sru_small.py --workdir=DIR [--config.x=y ...]
    flaxprune eval   --workdir=DIR [--split=test] [--reduced]
    flaxprune shrink --workdir=DIR --output=DIR2
    flaxprune report --checkpoint=DIR

``train`` resumes from the newest checkpoint in ``--workdir`` when there is
one; on SIGTERM it saves and exits 0, so rerunning the same command continues
the run exactly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from absl import flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, the reduced model.")
_SPLIT = flags.DEFINE_enum("split", "valid", ["valid", "test"], "eval: the split to evaluate.")
_REDUCED = flags.DEFINE_bool("reduced", False, "eval: evaluate the run's reduced model instead of its checkpoint.")
_OUTPUT = flags.DEFINE_string("output", None, "shrink: where to save the reduced model.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "report: a run directory or a reduced-model directory.")


class UsageError(ValueError):
    """A missing or unexpected command-line argument."""


def _require(**values) -> None:
    missing = [f"--{k}" for k, v in values.items() if not v]
    if missing:
        raise UsageError(f"missing required flag(s): {', '.join(missing)}")


def train_main(argv: list[str] | None = None) -> dict:
    """``flaxprune train`` / ``experiments/main.py``: train or resume a run."""
    if argv is not None and len(argv) > 1:
        raise UsageError(f"unexpected arguments: {argv[1:]}")
    _require(config=_CONFIG.value is not None, workdir=_WORKDIR.value)
    from flaxprune.training.loop import train

    return train(_CONFIG.value, _WORKDIR.value)


def eval_main() -> dict:
    """``flaxprune eval``: the task's metrics of a run's newest checkpoint (or reduced model) on a split."""
    _require(workdir=_WORKDIR.value)
    from flaxprune.training import inspect

    metrics = inspect.evaluate_run(_WORKDIR.value, _SPLIT.value, reduced=_REDUCED.value)
    for name, value in metrics.items():
        print(f"{name}: {value:.4f}")
    return metrics


def shrink_main() -> None:
    """``flaxprune shrink``: a run's newest checkpoint -> a reduced-model checkpoint."""
    _require(workdir=_WORKDIR.value, output=_OUTPUT.value)
    from flaxprune.training import inspect

    before, after = inspect.shrink_run(_WORKDIR.value, _OUTPUT.value)
    print(f"params {before:,} -> {after:,}; reduced model saved in {_OUTPUT.value}")


def report_main() -> None:
    """``flaxprune report``: per-layer ranks, params and FLOPs of a checkpoint."""
    _require(checkpoint=_CHECKPOINT.value)
    from flaxprune.training import inspect

    print(inspect.report_checkpoint(_CHECKPOINT.value))


COMMANDS: dict[str, Callable] = {"train": train_main, "eval": eval_main, "shrink": shrink_main, "report": report_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    argv_for_flags = [f"flaxprune {command}", *rest]
    saved_argv, sys.argv = sys.argv, argv_for_flags  # config_flags reads its --config.* overrides from sys.argv
    try:
        FLAGS.unparse_flags()
        FLAGS(argv_for_flags)
    except flags.Error as e:
        print(f"flaxprune {command}: {e}", file=sys.stderr)
        return 2
    except (AttributeError, KeyError) as e:  # config_flags: an override of a key the config lacks
        print(
            f"flaxprune {command}: unknown config key {e} in a --config.* override; the config file lists the "
            "accepted keys.",
            file=sys.stderr,
        )
        return 2
    finally:
        sys.argv = saved_argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    try:
        result = COMMANDS[command]() if command != "train" else train_main()
    except UsageError as e:
        print(f"flaxprune {command}: {e}", file=sys.stderr)
        return 2
    if command == "train" and isinstance(result, dict):
        print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
