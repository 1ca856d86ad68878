"""An embedded default corpus that exists on every machine: Python's own sources.

The demo must run offline, so its text is the source code of the Python
standard library that runs it: the top-level ``*.py`` files of the directory
holding ``os.py``, sorted by file name, read as bytes and joined, then cut at
``max_bytes``. The result is deterministic for a given Python version (the
standard library changes between versions, so numbers are quoted with the
version that made them). It is real, varied text: code, comments and
docstrings in English, with 100 or so distinct byte values, a reasonable
stand-in for enwik8's mix of markup and prose.
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

__all__ = ["split_bytes", "stdlib_text"]


def stdlib_text(max_bytes: int = 2_000_000) -> bytes:
    """Returns up to ``max_bytes`` of concatenated standard-library source.

    Raises:
      ValueError: if ``max_bytes`` < 1.
      FileNotFoundError: if the standard library sources are absent (some
        embedded Pythons ship only ``.pyc`` files).
    """
    if max_bytes < 1:
        raise ValueError(f"stdlib_text: max_bytes={max_bytes} must be >= 1.")
    root = pathlib.Path(os.__file__).resolve().parent
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(
            f"stdlib_text: no *.py files under {root}; this Python ({sys.version.split()[0]}) ships no "
            "standard-library sources. Pass a text file of your own instead."
        )
    chunks, total = [], 0
    for path in files:
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


def split_bytes(data: bytes, valid: float = 0.05, test: float = 0.05) -> dict[str, np.ndarray]:
    """Contiguous train / valid / test split (in that order) as ``uint8`` arrays.

    Raises:
      ValueError: if the fractions are not in [0, 1) or leave no training data.
    """
    for name, frac in (("valid", valid), ("test", test)):
        if not 0 <= frac < 1:
            raise ValueError(f"split_bytes: {name}={frac} must be in [0, 1).")
    if valid + test >= 1:
        raise ValueError(f"split_bytes: valid + test = {valid + test} must be < 1 to leave training data.")
    arr = np.frombuffer(data, dtype=np.uint8)
    n_valid, n_test = int(len(arr) * valid), int(len(arr) * test)
    n_train = len(arr) - n_valid - n_test
    return {
        "train": arr[:n_train],
        "valid": arr[n_train : n_train + n_valid],
        "test": arr[n_train + n_valid :],
    }
