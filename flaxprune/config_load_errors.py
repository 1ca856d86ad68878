"""One line for each way loading ``--config`` (ml_collections' config_flags) can fail.

config_flags runs the config file while absl parses the flags, and re-raises,
wraps or defers what went wrong: a syntax error, a missing file, a file with
no ``get_config()``, one returning None, an override of a key the config
lacks. :func:`usage_message` finds the original error in the chain and says
what it was and where, so ``flaxprune`` prints one line instead of a traceback.
"""

from __future__ import annotations

import logging as std_logging
import re
import traceback

from absl import flags
from ml_collections.config_flags import config_flags as config_flags_impl  # where it loads a config file

__all__ = ["CONFIG_NONE", "DropConfigNoneWarning", "usage_message"]


CONFIG_NONE = (
    "cannot load the --config file: its get_config() returned None; it must return the experiment's "
    "ml_collections.ConfigDict."
)


class DropConfigNoneWarning(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return "get_config() returned None" not in record.getMessage()


def usage_message(error: Exception, args: list[str]) -> str | None:
    """The one line for what parsing ``args`` (flags of a command taking ``--config``) raised; None: not a usage error.

    ``flags.Error`` is left to the caller (it names the command); this sorts out config_flags' own failures.
    """
    failure = _config_load_failure(error)
    if failure is not None:
        return f"cannot load the --config file: {_describe_load_failure(failure)}"
    if isinstance(error, flags.Error):
        return None
    if any("<class 'NoneType'>" in str(link) for link in _exception_chain(error)):  # overrides of a None config
        return CONFIG_NONE
    if isinstance(error, (AttributeError, KeyError)):  # config_flags: an override of a key the config lacks
        return _unknown_key_message(error, args)
    return None


def _exception_chain(error: BaseException) -> list[BaseException]:
    """``error``, then what it was raised from or while handling, and so on (the original last)."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def _config_load_failure(error: BaseException) -> BaseException | None:
    """The original error of loading the --config file (running it, its get_config()), if ``error`` is one.

    config_flags loads the file inside ``ConfigFileFlagParser.parse`` and re-raises, wraps or defers what it
    raised (an OSError on the config's first use, a flag error with the traceback in its message): the
    original is the deepest exception of the chain whose traceback passes through that function.
    """
    parser = getattr(config_flags_impl, "ConfigFileFlagParser", None)
    parse = getattr(getattr(parser, "parse", None), "__code__", None)
    found = None
    for link in _exception_chain(error):
        if parse is not None and any(frame.f_code is parse for frame, _ in traceback.walk_tb(link.__traceback__)):
            found = link
    return found


def _describe_load_failure(error: BaseException) -> str:
    """One line: what went wrong in the config file, and where."""
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
    if isinstance(error, OSError):  # config_flags' last line: "[Errno 2] No such file or directory: 'x.py'"
        return str(error).strip().splitlines()[-1].strip()
    if isinstance(error, AttributeError) and getattr(error, "name", None) == "get_config":
        return "the file defines no get_config(); it must define get_config() returning a ConfigDict."
    message = " ".join(str(error).split())
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {message}{where}"


def _unknown_key_message(error: BaseException, args: list[str]) -> str:
    """``--config.train.stepz names a key the config lacks ('stepz'; did you mean 'steps'?); ...``.

    config_flags raises ``AttributeError(KeyError("'stepz'\\nDid you mean ...?"))`` from ``KeyError('stepz')``.
    """
    chain = _exception_chain(error)
    keys = [e.args[0] for e in chain if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str)]
    key = keys[-1] if keys else None  # the deepest: the bare key
    texts = [str(link.args[0]) for link in chain if link.args]
    suggestion = next((m.group(1) for t in texts if (m := re.search(r'Did you mean "([^"]+)"', t))), None)
    overrides = [a.split("=", 1)[0] for a in args if re.match(r"--?config\.", a)]
    named = [o for o in overrides if key is not None and key in o.split(".")[1:]]
    what = named[-1] if named else "a --config.* override"
    detail = f"{key!r}" if key is not None else " ".join(str(error).split())
    if suggestion:
        detail += f"; did you mean {suggestion!r}?"
    return f"{what} names a key the config lacks ({detail}); the config file lists the accepted keys."
