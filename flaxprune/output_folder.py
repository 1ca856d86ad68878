"""The one rule for where a command may write a folder: new, empty, or an earlier one of its own kind.

No command deletes what it did not create: a reduced model (``flaxprune
shrink``), a ``jax.export`` folder and an HF-style export are each written
only into a new or empty folder, or, with ``overwrite``, over an earlier
folder of that same kind, which its own ``is_*`` predicate recognises.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

__all__ = ["check_output_folder"]


def check_output_folder(
    directory: str | pathlib.Path,
    overwrite: bool,
    *,
    what: str,
    is_ours: Callable[[pathlib.Path], bool],
    rewritable: Callable[[pathlib.Path], bool] | None = None,
) -> None:
    """Refuses an output folder that is not new, empty, or (with ``overwrite``) ``is_ours``; writes nothing.

    Args:
      directory: the output folder.
      overwrite: whether an earlier folder of this kind may be replaced.
      what: the kind, with its article (``'a reduced model'``, ``'an export'``), for the messages.
      is_ours: whether a non-empty folder holds this kind.
      rewritable: with ``overwrite``, a non-empty folder accepted as it is (a save of ours killed midway).

    Raises:
      FileExistsError: naming the folder, what is there, and what is accepted.
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"output {directory} is a file; {what} is written to a new or empty folder.")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return
    if overwrite and rewritable is not None and rewritable(directory):
        return
    if not is_ours(directory):
        shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        kind = what.split(" ", 1)[1]  # without its article
        raise FileExistsError(
            f"output {directory} is not empty ({shown}) and is not a flaxprune {kind}: nothing was written. "
            "Choose a new or empty folder."
        )
    if not overwrite:
        raise FileExistsError(
            f"output {directory} already holds {what}: nothing was written. Pass --overwrite "
            "(overwrite=True) to replace it, or choose a new folder."
        )
