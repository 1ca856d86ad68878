"""A byte-level text file as the ``text_char`` builder's input: linked into the experiment's workdir.

The builder reads one file, ``text.txt``, from its manual dir and splits it
90/5/5 contiguously (train, valid, test). An experiment links ``--data``
there, once; a rerun must name the same file, and a ``text.txt`` this code
did not make is never replaced.
"""

from __future__ import annotations

import pathlib

__all__ = ["link_text_file"]


def link_text_file(workdir: pathlib.Path, data: str) -> tuple[pathlib.Path, str | None]:
    """``(manual dir, None)`` with ``workdir/data/text.txt`` linking to ``data``, or ``(that dir, problem)``.

    The problem (one line, no file written) when the workdir was made for another file, or holds a
    ``text.txt`` that is not this code's link.
    """
    data_dir = workdir / "data"
    text = data_dir / "text.txt"
    source = pathlib.Path(data).resolve()
    if text.is_symlink():
        if text.resolve() != source:
            return data_dir, (f"--workdir={str(workdir)!r} was made for --data={str(text.resolve())!r}; pass that "
                              "file or a new workdir")
        return data_dir, None
    if text.exists():
        return data_dir, f"{text} exists and was not made by this script; pass a new workdir"
    data_dir.mkdir(parents=True, exist_ok=True)
    text.symlink_to(source)
    return data_dir, None
