"""Writing an experiment's results: ``<stem>.json`` (the rows) and ``<stem>.md`` (the table), with the command.

The Markdown file has two parts: the table the script generates, rewritten
on every run, and below the :data:`NOTES` marker the discussion written by
hand from the runs, which a rerun keeps as it is.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["NOTES", "command_line", "write_results"]

NOTES = "<!-- notes: written by hand from the runs above; the script keeps everything below this line -->"


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """``python experiments/<script> <args>``: the command to cite beside the numbers."""
    return f"python experiments/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def write_results(
    directory: str | pathlib.Path, stem: str, command: str, rows: list[dict[str, Any]], lines: list[str]
) -> None:
    """Writes ``<stem>.json`` (``{"command", "rows"}``) and ``<stem>.md`` (``lines``, then the kept notes).

    Args:
      directory: the results folder (created when missing).
      stem: the file name without extension.
      command: the command that made the results (:func:`command_line`).
      rows: one dict per run.
      lines: the generated Markdown, one line each.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    md = directory / f"{stem}.md"
    old = md.read_text(encoding="utf-8") if md.is_file() else ""
    notes = old[old.index(NOTES) :] if NOTES in old else ""
    md.write_text("\n".join(lines) + "\n" + (f"\n{notes.rstrip()}\n" if notes else ""), encoding="utf-8")
