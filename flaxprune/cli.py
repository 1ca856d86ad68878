"""The ``flaxprune`` console command: ``train``, ``eval``, ``shrink`` and ``report``.

Each command is described once, in ``COMMANDS`` (name, summary, function,
flags, examples); dispatch, ``flaxprune --help`` and ``flaxprune <command>
--help`` all read that table, so a new command is one more entry. Flags are
absl flags plus ``ml_collections.config_flags`` (``--config=FILE`` and
``--config.section.field=value`` overrides). Each command imports the training
code inside its function, so help and flag errors never load it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable

from absl import flags, logging
from ml_collections import config_flags

import flaxprune

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, the reduced model.")
_SPLIT = flags.DEFINE_enum("split", "valid", ["valid", "test"], "The split to evaluate.")
_REDUCED = flags.DEFINE_bool("reduced", False, "Evaluate the run's reduced model instead of its newest checkpoint.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to save the reduced model.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run directory or a reduced-model directory.")

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

    result = train(_CONFIG.value, _WORKDIR.value)
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

    before, after = runs.shrink_run(_WORKDIR.value, _OUTPUT.value)
    print(f"params {before:,} -> {after:,}; reduced model saved in {_OUTPUT.value}")


def report_main() -> None:
    """``flaxprune report``: per-layer ranks, params and FLOPs of a checkpoint."""
    from flaxprune.training import runs

    print(runs.report_checkpoint(_CHECKPOINT.value))


# ---------------------------------------------------------------------------------------------------------
# The table that dispatch and help both read.


@dataclasses.dataclass(frozen=True)
class Arg:
    """One flag as a command takes it; the absl flag owns its help text and default."""

    flag: flags.FlagHolder
    metavar: str = "VALUE"  # --workdir=DIR; bool and enum flags show their own forms
    required: bool = False

    @property
    def name(self) -> str:
        return self.flag.name

    def usage(self) -> str:
        """``--workdir=DIR``, ``--split=valid|test`` or ``--[no]reduced``."""
        flag = FLAGS[self.name]
        if isinstance(flag, flags.BooleanFlag):
            return f"--[no]{self.name}"
        if isinstance(flag, flags.EnumFlag):
            return f"--{self.name}={'|'.join(flag.parser.enum_values)}"
        return f"--{self.name}={self.metavar}"

    def describe(self) -> str:
        """``(required) <help>`` or ``(default: valid) <help>``, from the absl flag."""
        flag = FLAGS[self.name]
        if self.required:
            status = "required"
        elif flag.default is None:
            status = "optional"
        else:
            status = f"default: {flag.default_as_str.strip(chr(39))}"  # absl quotes it: 'valid'
        text = flag.help
        if isinstance(flag, flags.EnumFlag):  # absl prefixes "<valid|test>: ", which usage() already shows
            text = text.removeprefix(f"<{'|'.join(flag.parser.enum_values)}>: ")
        return f"({status}) {text}"

    def is_missing(self) -> bool:
        value = self.flag.value
        return value is None or (isinstance(value, str) and not value)


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: what dispatch runs and what its ``--help`` prints."""

    name: str
    summary: str  # one line, for the overview and the head of --help
    run: Callable[[], object]
    args: tuple[Arg, ...]
    examples: tuple[str, ...]  # whole command lines, each starting "flaxprune <name>"
    usage_tail: str = ""  # what the usage line shows after the flags
    notes: str = ""  # paragraphs after the flags

    def usage(self) -> str:
        shown = [a.usage() if a.required else f"[{a.usage()}]" for a in self.args]
        return " ".join(["usage: flaxprune", self.name, *shown, *([self.usage_tail] if self.usage_tail else [])])

    def help(self) -> str:
        width = max(len(a.usage()) for a in self.args) + 2
        lines = [f"flaxprune {self.name}: {self.summary}", "", self.usage(), "", "flags:"]
        lines += [f"  {a.usage():<{width}}{a.describe()}" for a in self.args]
        if self.notes:
            lines += ["", self.notes]
        lines += ["", "examples:", *(f"  {example}" for example in self.examples)]
        return "\n".join(lines)


_TRAIN_NOTES = """\
Rerunning the same command resumes the run from the newest checkpoint in --workdir. On SIGTERM the run
saves a checkpoint and exits 0, so a preempted job continues exactly where it stopped when rerun.

--config.SECTION.FIELD=VALUE overrides one field of the config file (e.g. --config.prune.target=0.8,
--config.train.steps=4000); give any number of them, after --config. The value is parsed as the field's
type; a key the config lacks is an error (the config file lists its fields, one commented line each).

At the end, train prints the run's summary as JSON ("status" says whether it finished or was preempted)."""

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            name="train",
            summary="Train a FLOP run, or resume it from the newest checkpoint in --workdir.",
            run=train_main,
            args=(Arg(_CONFIG, "FILE", required=True), Arg(_WORKDIR, "DIR", required=True)),
            usage_tail="[--config.SECTION.FIELD=VALUE ...]",
            notes=_TRAIN_NOTES,
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
            args=(Arg(_WORKDIR, "DIR", required=True), Arg(_SPLIT), Arg(_REDUCED)),
            examples=(
                "flaxprune eval --workdir=/tmp/run --split=test",
                "flaxprune eval --workdir=/tmp/run --split=test --reduced",
            ),
        ),
        Command(
            name="shrink",
            summary="Cut a run's newest checkpoint down to a reduced model (pruned ranks removed) and save it.",
            run=shrink_main,
            args=(Arg(_WORKDIR, "DIR", required=True), Arg(_OUTPUT, "DIR", required=True)),
            examples=("flaxprune shrink --workdir=/tmp/run --output=/tmp/run_small",),
        ),
        Command(
            name="report",
            summary="Print the per-layer kept ranks, params and FLOPs/token of a run or a reduced model.",
            run=report_main,
            args=(Arg(_CHECKPOINT, "DIR", required=True),),
            examples=("flaxprune report --checkpoint=/tmp/run", "flaxprune report --checkpoint=/tmp/run_small"),
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
    try:
        FLAGS.unparse_flags()  # FLAGS is global: forget the previous parse (tests call main many times)
        positional = FLAGS(argv)[1:]
    except flags.Error as e:
        raise UsageError(f"{e} (flaxprune {command.name} --help lists its flags)") from e
    except (AttributeError, KeyError) as e:  # config_flags: an override of a key the config lacks
        detail = e
        while isinstance(detail, BaseException) and detail.args:  # AttributeError(KeyError("'key'")) -> 'key'
            detail = detail.args[0]
        raise UsageError(
            f"a --config.* override names a key the config lacks ({detail}); the config file lists the accepted keys."
        ) from e
    except OSError as e:  # config_flags: overrides of a config file that did not load
        raise UsageError(_config_load_error(e)) from e
    finally:
        sys.argv = saved_argv
    if positional:
        raise UsageError(f"unexpected argument(s) {' '.join(positional)}; flags are written --name=value")
    own = [a.name for a in command.args]
    foreign = sorted({a.name for c in COMMANDS.values() for a in c.args} - set(own))
    given = [f"--{name}" for name in foreign if FLAGS[name].present]
    if given:
        raise UsageError(f"{', '.join(given)} is not a flag of {command.name}; it takes --{', --'.join(own)}")
    missing = [f"--{a.name}" for a in command.args if a.required and a.is_missing()]
    if missing:
        raise UsageError(f"missing required flag(s): {', '.join(missing)}")
    if "config" in own:
        try:  # config_flags defers a missing file's error to the config's first use: make it a usage error
            _CONFIG.value.keys()
        except OSError as e:
            raise UsageError(_config_load_error(e)) from e


def _config_load_error(error: OSError) -> str:
    reason = str(error).strip().splitlines()[-1].strip()  # config_flags' last line: "[Errno 2] No such file: 'x.py'"
    return f"cannot load the --config file: {reason}"


def main(argv: list[str] | None = None) -> int:
    """Runs ``flaxprune <command> [flags]``; returns the exit status (0 done, 2 a usage error)."""
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
    command.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
