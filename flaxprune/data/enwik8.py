"""enwik8 as a tfds dataset: byte-level language modelling on Wikipedia XML.

enwik8 is the first 10^8 bytes of an English Wikipedia XML dump (Mahoney's
Large Text Compression Benchmark). FLOP (Wang, Wohlwend & Lei, EMNLP 2020,
Section 4.1) prunes SRU and Transformer-XL models trained on it with the
standard split: the first 9 * 10^7 bytes for training, the next 5 * 10^6 for
validation and the last 5 * 10^6 for test. Tokens are raw byte values, so the
vocabulary is the 256 byte values (ids 0..255).

Where the bytes come from, in this order:

1. The manual dir (``DownloadConfig(manual_dir=...)``, by default
   ``<data_dir>/downloads/manual``), first of the names in
   ``MANUAL_FILE_NAMES``: ``enwik8`` (the raw file), ``enwik8.zip`` (the
   official archive), or a prefix of enwik8 named ``enwik7`` .. ``enwik3``
   (its first 10^k bytes, e.g. ``head -c 1000000 enwik8 > enwik6``) for
   quick runs. Any other file of those names is accepted as it is.
2. Otherwise the official archive, downloaded from ``URL`` and read in place
   (not extracted: tfds' extractor needs TensorFlow, which flaxprune does not install).

Splits follow the paper for the full 10^8 bytes and are 90% / 5% / 5%
contiguous (train, valid, test in that order) for any other size; both are
``enwik8_split_sizes``. The paper's split *is* the 90/5/5 rule at 10^8, so a
prefix splits the same way the full file does.

Storage: a split is one contiguous byte stream, stored as examples
``{'index': int64, 'bytes': uint8[<= CHUNK_SIZE]}``, chunk ``index`` holding
bytes ``[index * CHUNK_SIZE, (index + 1) * CHUNK_SIZE)`` of the split; a split
is read back by concatenating its chunks in ``index`` order
(``flaxprune.data.corpus.read_stream``). Records are array_record files read
through ``builder.as_data_source()``, so TensorFlow is not needed. The file
used is recorded in ``info.metadata['source']`` (name and size).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flaxprune.data import builder_inputs

__all__ = [
    "CHUNK_SIZE",
    "ENWIK8_BYTES",
    "MANUAL_FILE_NAMES",
    "URL",
    "Enwik8",
    "describe_source",
    "enwik8_split_sizes",
    "find_enwik8_file",
    "read_enwik8_file",
]

URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_BYTES = 10**8
# Bytes per stored example: 64 KiB keeps records small and a split of the full
# file at ~1400 records.
CHUNK_SIZE = 2**16


def byte_chunk_features() -> tfds.features.FeaturesDict:
    """A byte-level split stored as ordered chunks (shared by the byte-level builders)."""
    return tfds.features.FeaturesDict(
        {
            "index": np.int64,  # chunk position within the split
            "bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8),  # [<= CHUNK_SIZE]
        }
    )


# Looked up in the manual dir in this order; the first present wins.
MANUAL_FILE_NAMES = ("enwik8", "enwik8.zip", "enwik7", "enwik6", "enwik5", "enwik4", "enwik3")


def enwik8_split_sizes(n_bytes: int) -> tuple[int, int, int]:
    """Returns the (train, valid, test) sizes for a file of ``n_bytes`` bytes.

    The full enwik8 (10^8 bytes) gets the paper's 9e7 / 5e6 / 5e6 split; any
    other size gets 5% valid and 5% test (rounded down) with the rest for
    train. The three parts are contiguous, in the order train, valid, test.

    Args:
      n_bytes: the file size, >= 0.

    Returns:
      ``(n_train, n_valid, n_test)``, summing to ``n_bytes``.

    Raises:
      ValueError: if ``n_bytes`` < 0.
    """
    if n_bytes < 0:
        raise ValueError(f"enwik8_split_sizes: n_bytes={n_bytes} must be >= 0.")
    if n_bytes == ENWIK8_BYTES:
        return ENWIK8_BYTES - 10**7, 5 * 10**6, 5 * 10**6
    # Integer arithmetic: equal to split_bytes' int(n * 0.05) for every n <= 10^8.
    n_valid = n_test = n_bytes * 5 // 100
    return n_bytes - n_valid - n_test, n_valid, n_test


def find_enwik8_file(manual_dir: str | epath.PathLike | None) -> epath.Path | None:
    """Returns the first of ``MANUAL_FILE_NAMES`` present in ``manual_dir``, or None."""
    if manual_dir is None:
        return None
    root = epath.Path(manual_dir)
    if not root.is_dir():
        return None
    for name in MANUAL_FILE_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _is_zip(path: epath.Path) -> bool:
    with path.open("rb") as f:
        return zipfile.is_zipfile(f)


def read_enwik8_file(path: str | epath.PathLike) -> np.ndarray:
    """Reads a raw enwik file, or the ``enwik8`` member of a zip, as bytes.

    Args:
      path: a raw file, or a ``.zip`` archive holding ``enwik8`` (or a single
        member).

    Returns:
      The bytes as a ``uint8`` array, ``[n_bytes]``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file (or the archive member) is empty, or the archive
        holds neither ``enwik8`` nor exactly one member.
    """
    path = epath.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"enwik8: {path} does not exist (expected one of {MANUAL_FILE_NAMES}).")
    if path.name.endswith(".zip") or _is_zip(path):  # a download's name need not end in .zip
        with path.open("rb") as f, zipfile.ZipFile(f) as archive:
            names = archive.namelist()
            member = "enwik8" if "enwik8" in names else (names[0] if len(names) == 1 else None)
            if member is None:
                raise ValueError(f"enwik8: archive {path} holds {names}; expected a member named 'enwik8'.")
            data = archive.read(member)
        where = f"{path}:{member}"
    else:
        data = path.read_bytes()
        where = str(path)
    if not data:
        raise ValueError(f"enwik8: {where} is empty; expected a prefix of enwik8 (up to {ENWIK8_BYTES} bytes).")
    return np.frombuffer(data, dtype=np.uint8)


def describe_source(path: str | epath.PathLike) -> dict[str, object]:
    """The record kept in ``info.metadata['source']``: file name and size in bytes."""
    path = epath.Path(path)
    return {"file": path.name, "bytes": path.stat().length}


class Enwik8(tfds.core.GeneratorBasedBuilder):
    """enwik8, byte level, split as in the paper (see the module docstring)."""

    # tfds derives this from importlib_resources, a package it uses but does not
    # install; this is the value it would compute (no checksums file beside it).
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Byte-level, contiguous chunks of 2^16 bytes."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. Place one of these files in the manual dir (first present wins): "
        f"{', '.join(MANUAL_FILE_NAMES)}. 'enwik8' is the raw 10^8-byte file, 'enwik8.zip' the archive "
        f"from {URL}, and 'enwik<k>' a prefix of enwik8 (its first 10^k bytes, e.g. "
        "`head -c 1000000 enwik8 > enwik6`). Without one, the archive is downloaded."
    )

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record, not tfds' default tfrecord: its writer and the random-access
        # reader (as_data_source) need no TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="enwik8: the first 10^8 bytes of an English Wikipedia XML dump, byte level.",
            features=byte_chunk_features(),
            homepage="http://mattmahoney.net/dc/textdata.html",
            metadata=tfds.core.MetadataDict(),
            # Chunks are written in index order; there is nothing to gain from shuffling them.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        folder = builder_inputs.manual_dir(dl_manager, "enwik8", required=False)  # None: absent or empty
        path = find_enwik8_file(folder)
        if path is None:
            try:
                # Downloaded, not extracted: tfds' extractor imports TensorFlow; the zip is read in place.
                path = epath.Path(dl_manager.download(URL))
            except Exception as e:  # Offline, proxy, server: all mean the same to the user.
                raise FileNotFoundError(
                    f"enwik8: no {' / '.join(MANUAL_FILE_NAMES)} in the manual dir ({folder or 'absent or empty'}) "
                    f"and downloading {URL} failed ({type(e).__name__}: {e}). Download it elsewhere and place it in "
                    "the manual dir."
                ) from e
        data = read_enwik8_file(path)  # [n_bytes]
        self.info.metadata["source"] = describe_source(path)
        n_train, n_valid, _ = enwik8_split_sizes(len(data))
        return {
            "train": self._generate_examples(data[:n_train]),
            "valid": self._generate_examples(data[n_train : n_train + n_valid]),
            "test": self._generate_examples(data[n_train + n_valid :]),
        }

    def _generate_examples(self, data: np.ndarray) -> Iterator[tuple[int, dict[str, object]]]:
        # At least one (possibly empty) chunk: tfds refuses a split with no examples.
        for index, start in enumerate(range(0, max(len(data), 1), CHUNK_SIZE)):
            yield index, {"index": index, "bytes": data[start : start + CHUNK_SIZE]}
