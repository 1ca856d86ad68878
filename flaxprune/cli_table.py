"""The command table's rows: a flag as a command takes it (:class:`Arg`) and a subcommand (:class:`Command`).

``flaxprune``'s dispatch and every ``--help`` read the same table
(:data:`flaxprune.cli.COMMANDS`); the absl flags own their help texts and
defaults, these rows say which command takes which flag and how to show it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from absl import flags

__all__ = ["Arg", "Command"]

FLAGS = flags.FLAGS


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
    one_of: tuple[str, ...] = ()  # flag names of which exactly one must be given (checked before the command runs)

    def one_of_problem(self) -> str | None:
        """``'give one of --a=X or --b=Y[, not both]'`` when not exactly one of ``one_of`` is given, else None."""
        if not self.one_of:
            return None
        args = [a for a in self.args if a.name in self.one_of]
        given = [a for a in args if not a.is_missing()]
        if len(given) == 1:
            return None
        return f"give one of {' or '.join(a.usage() for a in args)}{', not both' if given else ''}"

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
