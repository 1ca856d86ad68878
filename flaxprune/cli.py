"""The ``flaxprune`` console command: ``train``, ``eval``, ``shrink``, ``report``, ``export``, ``plot`` and ``bench``.

Each command is described once, in ``COMMANDS`` (name, summary, function,
flags, examples); dispatch, ``flaxprune --help`` and ``flaxprune <command>
--help`` all read that table, so a new command is one more entry. Flags are
absl flags plus ``ml_collections.config_flags`` (``--config=FILE`` and
``--config.section.field=value`` overrides). Each command imports the training
code inside its function, so help and flag errors never load it.

Every bad input ends in one line on stderr, ``flaxprune <command>: <what is wrong>``: exit 2 for a usage
error (flags, the config file), 1 for an error the command raised (a missing run directory, a bad config
field, data too small, a non-finite loss), 130 for Ctrl-C. ``--debug`` (or ``FLAXPRUNE_DEBUG=1``) lets the
error propagate with its traceback instead.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

from absl import flags, logging
from ml_collections import config_flags

import flaxprune
from flaxprune.cli_notes import BENCH_NOTES, EXPORT_NOTES, PLOT_NOTES, TRAIN_NOTES
from flaxprune.cli_table import Arg, Command
from flaxprune.config_load_errors import CONFIG_NONE, DropConfigNoneWarning, usage_message
from flaxprune.host_memory import keep_freed_memory

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, the reduced model.")
_SPLIT = flags.DEFINE_enum("split", "valid", ["valid", "test"], "The split to evaluate.")
_REDUCED = flags.DEFINE_bool("reduced", False, "Evaluate the run's reduced model instead of its newest checkpoint.")
_OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "Where to write: the reduced model (shrink), the export (export), the results folder (bench; default "
    "experiments/results).",
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run directory or a reduced-model directory.")
_FORMAT = flags.DEFINE_enum(
    "format",
    "jax",
    ["jax", "hf"],
    "What export writes: jax = a jax.export folder (model.jaxexport, weights.npz, manifest.json) that runs with jax "
    "alone, any model; hf = an HF-style BERT classifier folder (config.json, model.safetensors, tokenizer files) "
    "that flaxprune, numpy or PyTorch code can load.",
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace an earlier reduced model (shrink) or export (export) in --output; anything else there is never replaced.",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a run whose saved config.json differs from --config outside the model; the change is recorded in "
    "the run's config_history.jsonl. Without it such a resume is refused, naming the changed fields.",
)
# bench: None means "not given", so --quick can supply its own value (flaxprune.benchmark.QUICK).
_QUICK = flags.DEFINE_bool(
    "quick", False, "Small models and grid (batches 1,8, seq 128, 3 repeats): a few minutes on 2 CPU cores."
)
_SIZE = flags.DEFINE_enum(
    "size", None, ["full", "small", "tiny"], "Model sizes (default full; --quick small; tiny for tests)."
)
_MODELS = flags.DEFINE_string("models", None, "Comma-separated model families among sru,txl,bert (default all).")
_LEVELS = flags.DEFINE_string("levels", None, "Comma-separated sparsity levels in (0, 1) (default 0.5,0.7,0.9).")
_BATCHES = flags.DEFINE_string("batches", None, "Comma-separated batch sizes (default 1,8,64; --quick 1,8).")
_SEQS = flags.DEFINE_string("seqs", None, "Comma-separated sequence lengths (default 128,256; --quick 128).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed samples per variant, interleaved (default 5; --quick 3).")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, ["float32", "bfloat16"], "Computation dtype; params stay float32 (default float32)."
)
_TRAINING = flags.DEFINE_bool("training", True, "Time the train steps too (--notraining: inference only).")
_ISOLATE = flags.DEFINE_bool(
    "isolate", True, "Time each model in a fresh process (--noisolate: all in this one; heap state then carries over)."
)
_MAX_TOKENS = flags.DEFINE_integer(
    "max_tokens", None, "Skip inference cases of more than this many tokens per call (default 0: none)."
)
_DEBUG = flags.DEFINE_bool(
    "debug", False, "On an error, show the full Python traceback instead of one line (or set FLAXPRUNE_DEBUG=1)."
)

DEBUG_ENV = "FLAXPRUNE_DEBUG"  # set to 1 (any value but '', 0, false, no): the same as --debug
# What a command raises for a bad input (a missing file, a bad config field, data too small, a non-finite loss:
# flaxprune.training.loop.NonFiniteLossError is a FloatingPointError; a workdir in use and a damaged checkpoint
# are an OSError and a ValueError); main prints it as one line.
COMMAND_ERRORS = (ValueError, OSError, FloatingPointError)

# Recognised anywhere among a command's arguments (before a bare ``--``); absl's own help flags are not
# defined here, since they would list every absl flag rather than the command's.
HELP_ARGS = frozenset({"-h", "-help", "--help", "-helpfull", "--helpfull", "-helpshort", "--helpshort"})


class UsageError(ValueError):
    """A missing or unexpected command-line argument."""


# ---------------------------------------------------------------------------------------------------------
# The commands. Dispatch has parsed and checked the flags (required ones present) before any of these runs.


def train_main() -> dict:
    """``flaxprune train`` / ``experiments/main.py``: trains or resumes a run; prints its summary as JSON."""
    from flaxprune.training.loop import train

    result = train(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=1))
    return result


def eval_main() -> dict:
    """``flaxprune eval``: the task's metrics of a run's newest checkpoint (or reduced model) on a split."""
    from flaxprune.training import runs

    metrics = runs.evaluate_run(_WORKDIR.value, _SPLIT.value, reduced=_REDUCED.value)
    for name, value in metrics.items():
        print(f"{name}: {value:.4f}")
    return metrics


def shrink_main() -> None:
    """``flaxprune shrink``: a run's newest checkpoint -> a reduced-model checkpoint."""
    from flaxprune.training import runs

    before, after = runs.shrink_run(_WORKDIR.value, _OUTPUT.value, overwrite=_OVERWRITE.value)
    print(f"params {before:,} -> {after:,}; reduced model saved in {_OUTPUT.value}")


def report_main() -> None:
    """``flaxprune report``: per-layer ranks, params and FLOPs of a checkpoint, or of the model a config builds."""
    from flaxprune.training import runs

    if _CHECKPOINT.value:
        print(runs.report_checkpoint(_CHECKPOINT.value))
    else:
        print(runs.report_config(_CONFIG.value, config_flags.get_config_filename(FLAGS[_CONFIG.name])))


def export_main() -> None:
    """``flaxprune export``: a run's (or a folder's) reduced model -> a portable ``jax.export`` or HF-style folder."""
    given = [f.name for f in (_WORKDIR, _CHECKPOINT) if f.value]
    if len(given) != 1:
        raise UsageError(f"give one of --workdir=RUN or --checkpoint=DIR{', not both' if given else ''}")
    source, run_only = _WORKDIR.value or _CHECKPOINT.value, bool(_WORKDIR.value)
    if _FORMAT.value == "hf":
        _export_hf(source, run_only)
        return
    from flaxprune import export

    try:
        manifest = export.export_reduced(source, _OUTPUT.value, overwrite=_OVERWRITE.value, run_only=run_only)
    except ModuleNotFoundError as e:  # jax's serialization needs flatbuffers: a one-line error like the others
        raise OSError(str(e)) from e
    shapes = ", ".join(f"{x['name']}[{','.join(map(str, x['shape']))}]" for x in manifest["inputs"])
    print(f"exported {manifest['source']} to {pathlib.Path(_OUTPUT.value).absolute()}")
    print(f"{manifest['model_class']}: {manifest['total_params']:,} params, inputs {shapes}, "
          f"platforms {', '.join(manifest['platforms'])}")


def plot_main() -> None:
    """``flaxprune plot``: the run's PNGs beside its metrics.jsonl (during a run too)."""
    from flaxprune.training.run_plots import plot_run

    for path in plot_run(_WORKDIR.value):
        print(f"wrote {path}")


def _export_hf(source: str, run_only: bool) -> None:
    """``flaxprune export --format=hf``: a GLUE run's (or a reduced BERT's) model -> an HF-style folder."""
    from flaxprune import hf_export
    from flaxprune.training.run_dir import RunFiles

    if run_only and not RunFiles(source).config.is_file():
        raise FileNotFoundError(f"{RunFiles(source).config} is missing: {source} is not a flaxprune run directory.")
    written = hf_export.export_run_hf(source, _OUTPUT.value, overwrite=_OVERWRITE.value)
    block = written["flaxprune"]
    kinds = [e["kind"] for layer in block["layers"] for e in layer.values()]
    print(f"exported {block['source']} to {pathlib.Path(_OUTPUT.value).absolute()} (HF format)")
    print(f"BertForSequenceClassification: {block['total_params']:,} params, {written['num_labels']} labels; "
          f"projections: {', '.join(f'{kinds.count(k)} {k}' for k in hf_export.KINDS)}")


def bench_main() -> None:
    """``flaxprune bench`` / ``experiments/bench.py``: the speed suite; writes its results files, prints the summary."""
    from flaxprune import benchmark, benchmark_report

    values = {f.name: (f.value if FLAGS[f.name].present else None) for f in _BENCH_FLAGS}
    values["quick"], values["training"], values["isolate"] = _QUICK.value, _TRAINING.value, _ISOLATE.value
    try:
        options = benchmark.parse_flags(values)
    except ValueError as e:
        raise UsageError(str(e)) from e
    writer = benchmark_report.results_writer()  # before anything runs: an install without it fails at once
    result = benchmark.run(options)
    path = benchmark_report.write(result, options.output, options.quick, writer)
    lines = benchmark_report.markdown(result)
    start = next(i for i, line in enumerate(lines) if line.startswith("## Summary"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    print("\n".join(lines[start:end]).rstrip())
    print(f"\nwrote {path} and {path.with_suffix('.json')}")


_BENCH_FLAGS = (_SIZE, _MODELS, _LEVELS, _BATCHES, _SEQS, _REPEATS, _DTYPE, _MAX_TOKENS, _OUTPUT)


# ---------------------------------------------------------------------------------------------------------
# The table that dispatch and help both read.


COMMON_ARGS = (Arg(_DEBUG),)  # every command takes these

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            name="train",
            summary="Train a FLOP run, or resume it from the newest checkpoint in --workdir.",
            run=train_main,
            args=(
                Arg(_CONFIG, "FILE", required=True),
                Arg(_WORKDIR, "DIR", required=True),
                Arg(_ALLOW_CONFIG_CHANGE),
                *COMMON_ARGS,
            ),
            usage_tail="[--config.SECTION.FIELD=VALUE ...]",
            notes=TRAIN_NOTES,
            examples=(
                "flaxprune train --config=experiments/configs/sru_small.py --workdir=/tmp/run",
                "flaxprune train --config=experiments/configs/sru_small.py --workdir=/tmp/run "
                "--config.prune.target=0.8 --config.train.steps=4000",
            ),
        ),
        Command(
            name="eval",
            summary="Print a run's task metrics on a split, from its newest checkpoint or its reduced model.",
            run=eval_main,
            args=(Arg(_WORKDIR, "DIR", required=True), Arg(_SPLIT), Arg(_REDUCED), *COMMON_ARGS),
            examples=(
                "flaxprune eval --workdir=/tmp/run --split=test",
                "flaxprune eval --workdir=/tmp/run --split=test --reduced",
            ),
        ),
        Command(
            name="shrink",
            summary="Cut a run's newest checkpoint down to a reduced model (pruned ranks removed) and save it.",
            run=shrink_main,
            args=(
                Arg(_WORKDIR, "DIR", required=True),
                Arg(_OUTPUT, "DIR", required=True),
                Arg(_OVERWRITE),
                *COMMON_ARGS,
            ),
            examples=(
                "flaxprune shrink --workdir=/tmp/run --output=/tmp/run_small",
                "flaxprune shrink --workdir=/tmp/run --output=/tmp/run_small --overwrite",
            ),
        ),
        Command(
            name="report",
            summary="Print the per-layer kept ranks, params and FLOPs/token of a run, a reduced model or a config.",
            run=report_main,
            args=(Arg(_CHECKPOINT, "DIR"), Arg(_CONFIG, "FILE"), *COMMON_ARGS),
            one_of=("checkpoint", "config"),
            examples=("flaxprune report --checkpoint=/tmp/run", "flaxprune report --checkpoint=/tmp/run_small",
                      "flaxprune report --config=experiments/configs/sru_wt103.py"),
        ),
        Command(
            name="export",
            summary="Write a reduced model as a jax.export folder (any model) or an HF-style folder (BERT).",
            run=export_main,
            args=(
                Arg(_WORKDIR, "DIR"),
                Arg(_CHECKPOINT, "DIR"),
                Arg(_OUTPUT, "DIR", required=True),
                Arg(_FORMAT),
                Arg(_OVERWRITE),
                *COMMON_ARGS,
            ),
            notes=EXPORT_NOTES,
            examples=(
                "flaxprune export --workdir=/tmp/run --output=/tmp/run_export",
                "flaxprune export --checkpoint=/tmp/run_small --output=/tmp/run_export --overwrite",
                "flaxprune export --format=hf --workdir=/tmp/mrpc_flop --output=/tmp/mrpc_hf",
            ),
        ),
        Command(
            name="plot",
            summary="Draw a run's curves, sparsity against the target, multipliers and kept ranks as PNGs.",
            run=plot_main,
            args=(Arg(_WORKDIR, "DIR", required=True), *COMMON_ARGS),
            notes=PLOT_NOTES,
            examples=("flaxprune plot --workdir=/tmp/run",),
        ),
        Command(
            name="bench",
            summary="Time reduced models against unpruned ones (inference grid, train steps); write the tables.",
            run=bench_main,
            args=(
                Arg(_QUICK),
                Arg(_SIZE),
                Arg(_MODELS, "LIST"),
                Arg(_LEVELS, "LIST"),
                Arg(_BATCHES, "LIST"),
                Arg(_SEQS, "LIST"),
                Arg(_REPEATS, "N"),
                Arg(_DTYPE),
                Arg(_TRAINING),
                Arg(_ISOLATE),
                Arg(_MAX_TOKENS, "N"),
                Arg(_OUTPUT, "DIR"),
                *COMMON_ARGS,
            ),
            notes=BENCH_NOTES,
            examples=(
                "flaxprune bench --quick",
                "flaxprune bench --models=sru,bert --levels=0.7 --batches=8,64 --seqs=128",
                "flaxprune bench --quick --size=tiny --repeats=2 --notraining --output=/tmp/bench",
            ),
        ),
    )
}


def overview() -> str:
    """What ``flaxprune --help`` prints: every command with its summary."""
    width = max(map(len, COMMANDS)) + 2
    return "\n".join(
        [
            "flaxprune: structured pruning of language models by factorized low-rank pruning (FLOP).",
            "",
            "usage: flaxprune <command> [flags]",
            "",
            "commands:",
            *(f"  {c.name:<{width}}{c.summary}" for c in COMMANDS.values()),
            "",
            "flaxprune <command> --help for more; flaxprune --version prints the version.",
        ]
    )


# ---------------------------------------------------------------------------------------------------------
# Dispatch.


def asks_for_help(args: list[str]) -> bool:
    """Whether a help flag is among ``args`` (those after a bare ``--`` are positional, not flags)."""
    flag_args = args[: args.index("--")] if "--" in args else args
    return any(arg in HELP_ARGS for arg in flag_args)


def _parse_flags(command: Command, args: list[str]) -> None:
    """Parses ``args`` into FLAGS and checks them against ``command``'s table entry.

    Raises:
      UsageError: a flag absl or config_flags rejects, an unexpected positional argument, a flag of another
        command, a missing required flag, or a config file that does not load.
    """
    argv = [f"flaxprune {command.name}", *args]
    saved_argv, sys.argv = sys.argv, argv  # config_flags reads its --config.* overrides from sys.argv
    quiet = DropConfigNoneWarning()  # config_flags warns of a get_config() returning None: an error below
    logging.get_absl_logger().addFilter(quiet)
    try:
        FLAGS.unparse_flags()  # FLAGS is global: forget the previous parse (tests call main many times)
        for name in [n for n in FLAGS if n.startswith(f"{_CONFIG.name}.")]:
            delattr(FLAGS, name)  # config_flags defines a flag per --config.x override; a second parse would clash
        positional = FLAGS(argv)[1:]
    except Exception as e:  # a config file can raise anything: _usage_error sorts it out
        usage = _usage_error(command, args, e)
        if usage is None:
            raise
        raise usage from e
    finally:
        sys.argv = saved_argv
        logging.get_absl_logger().removeFilter(quiet)
    if positional:
        raise UsageError(f"unexpected argument(s) {' '.join(positional)}; flags are written --name=value")
    own = [a.name for a in command.args]
    foreign = sorted({a.name for c in COMMANDS.values() for a in c.args} - set(own))
    given = [f"--{name}" for name in foreign if FLAGS[name].present]
    if given:
        raise UsageError(f"{', '.join(given)} is not a flag of {command.name}; it takes --{', --'.join(own)}")
    if "config" in own and FLAGS["config"].present:
        config = _CONFIG.value
        try:  # config_flags defers a missing file's error to the config's first use: make it a usage error
            if config is not None:
                config.keys()
        except OSError as e:
            usage = _usage_error(command, args, e)
            if usage is None:
                raise
            raise usage from e
        if config is None:
            raise UsageError(CONFIG_NONE)
    missing = [f"--{a.name}" for a in command.args if a.required and a.is_missing()]
    if missing:
        raise UsageError(f"missing required flag(s): {', '.join(missing)}")
    if command.one_of_problem():
        raise UsageError(command.one_of_problem())


def _usage_error(command: Command, args: list[str], error: Exception) -> UsageError | None:
    """The one-line UsageError for what parsing ``args`` raised; None for an error that is not one."""
    message = usage_message(error, args)
    if message is None and isinstance(error, flags.Error):
        message = f"{error} (flaxprune {command.name} --help lists its flags)"
    return None if message is None else UsageError(message)


def _debugging() -> bool:
    """``--debug``, or ``FLAXPRUNE_DEBUG`` set: let a command's error propagate with its traceback."""
    return bool(_DEBUG.value) or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _error_line(error: BaseException) -> str:
    """The error's own message (a multi-line one as it is), or its type when it has none."""
    return str(error).strip() or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Runs ``flaxprune <command> [flags]``; returns the exit status.

    0: done; 1: the command failed on a bad input (one line on stderr); 2: a usage error; 130: interrupted.
    With ``--debug`` or ``FLAXPRUNE_DEBUG=1`` a command's error propagates instead, traceback and all.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(overview(), file=sys.stderr)
        return 2
    if argv[0] in HELP_ARGS:
        print(overview())
        return 0
    if argv[0] == "--version":
        print(f"flaxprune {flaxprune.__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(
            f"flaxprune: unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)} "
            "(flaxprune --help for more).",
            file=sys.stderr,
        )
        return 2
    if asks_for_help(argv[1:]):
        print(command.help())
        return 0
    try:
        _parse_flags(command, argv[1:])
    except UsageError as e:
        print(f"flaxprune {command.name}: {e}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    keep_freed_memory()  # before the command's first computation: see flaxprune.host_memory
    try:
        command.run()
    except KeyboardInterrupt:
        if _debugging():
            raise
        print(f"flaxprune {command.name}: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:  # flags that only the command can judge together (export's --workdir / --checkpoint)
        print(f"flaxprune {command.name}: {e}", file=sys.stderr)
        return 2
    except COMMAND_ERRORS as e:
        if _debugging():
            raise
        print(f"flaxprune {command.name}: {_error_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
