"""Local text files as a tfds dataset, at the character (byte) or word level.

For corpora other than enwik8, e.g. WikiText-2 / WikiText-103, which FLOP
(Wang, Wohlwend & Lei, EMNLP 2020, Section 4.1) uses at the word level with
an adaptive softmax. Two configs:

* ``char``: raw bytes, ids 0..255 (vocab 256), stored as ``'bytes'`` (uint8).
* ``word``: WikiText style, as in the AWD-LSTM / FLOP data code: each line
  (universal newlines) is split on whitespace and ``<eos>`` is appended, so an
  empty line is a lone ``<eos>``. The vocabulary comes from the *train* split
  only, sorted by descending frequency then by token, and always holds
  ``<unk>`` (WikiText already has it; otherwise it is added with count 0, so
  it comes last); valid / test tokens unseen in train map to ``<unk>``. The
  vocabulary is saved with the dataset in ``info.metadata['vocab']`` (id i is
  ``vocab[i]``), so ids are reproducible. Ids are stored as ``'ids'``
  (int32). Files must be UTF-8.

Input, from the manual dir (``DownloadConfig(manual_dir=...)``, by default
``<data_dir>/downloads/manual``), ``find_text_files``:

* per-split files, any of them present: ``train.txt`` / ``valid.txt`` /
  ``test.txt``, or WikiText's ``wiki.train.tokens`` / ``wiki.valid.tokens`` /
  ``wiki.test.tokens``; only the splits present are generated (``word``
  needs ``train``, for the vocabulary);
* or a single ``text.txt``, split 90% / 5% / 5% contiguously (train, valid,
  test in that order): by bytes for ``char``, by tokens for ``word``.

Storage: like ``flaxprune.data.enwik8``, each split is one contiguous stream
of ``CHUNK_SIZE``-long examples ``{'index': int64, 'bytes'|'ids': [...]}``,
read back in ``index`` order. ``info.metadata['source']`` records the input
files (name and size) per split.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flaxprune.data import builder_inputs

__all__ = [
    "CHUNK_SIZE",
    "EOS",
    "SINGLE_FILE_NAME",
    "SPLIT_FILE_NAMES",
    "UNK",
    "TextFile",
    "TextFileConfig",
    "build_vocab",
    "describe_source",
    "find_text_files",
    "split_sizes",
    "tokenize_words",
]

CHUNK_SIZE = 2**16  # tokens (bytes or word ids) per stored example
EOS = "<eos>"
UNK = "<unk>"
# Per split, the accepted file names: plain, then WikiText's.
SPLIT_FILE_NAMES = {
    "train": ("train.txt", "wiki.train.tokens"),
    "valid": ("valid.txt", "wiki.valid.tokens"),
    "test": ("test.txt", "wiki.test.tokens"),
}
SINGLE_FILE_NAME = "text.txt"
_ACCEPTED = ", ".join([n for names in SPLIT_FILE_NAMES.values() for n in names] + [SINGLE_FILE_NAME])


def split_sizes(n: int) -> tuple[int, int, int]:
    """Returns (train, valid, test) sizes for a 90/5/5 contiguous split of ``n`` tokens.

    Valid and test get ``n * 5 // 100`` each (equal to ``split_bytes``'
    ``int(n * 0.05)``), train the rest.
    """
    if n < 0:
        raise ValueError(f"split_sizes: n={n} must be >= 0.")
    n_valid = n_test = n * 5 // 100
    return n - n_valid - n_test, n_valid, n_test


def find_text_files(manual_dir: str | epath.PathLike) -> dict[str, epath.Path]:
    """Finds the input files in ``manual_dir``.

    Args:
      manual_dir: the directory to look in.

    Returns:
      ``{split: path}`` for the per-split files present (a subset of
      ``'train'``, ``'valid'``, ``'test'``), or ``{'text': path}`` for a
      single ``text.txt``.

    Raises:
      FileNotFoundError: if ``manual_dir`` holds none of the accepted files.
      ValueError: if a split has files under both naming schemes, if both
        per-split files and ``text.txt`` are present, or if a file is empty.
    """
    root = epath.Path(manual_dir)
    found: dict[str, epath.Path] = {}
    for split, names in SPLIT_FILE_NAMES.items():
        present = [root / n for n in names if (root / n).is_file()]
        if len(present) > 1:
            raise ValueError(
                f"text_file: {root} holds {[p.name for p in present]} for the {split!r} split; keep one of them."
            )
        if present:
            found[split] = present[0]
    single = root / SINGLE_FILE_NAME
    if single.is_file():
        if found:
            raise ValueError(
                f"text_file: {root} holds both {SINGLE_FILE_NAME} and per-split files "
                f"{[p.name for p in found.values()]}; keep one kind."
            )
        found["text"] = single
    if not found:
        raise FileNotFoundError(f"text_file: no input file in {root}; expected any of: {_ACCEPTED}.")
    for path in found.values():
        if path.stat().length == 0:
            raise ValueError(f"text_file: {path} is empty.")
    return found


def describe_source(manual_dir: str | epath.PathLike) -> dict[str, dict[str, object]]:
    """The record kept in ``info.metadata['source']``: per split, file name and size in bytes."""
    return {k: {"file": p.name, "bytes": p.stat().length} for k, p in find_text_files(manual_dir).items()}


def tokenize_words(text: str) -> list[str]:
    """WikiText-style tokens: each line's whitespace-separated words, then ``<eos>``.

    Lines are split as Python's text files do (universal newlines); a final
    line without a newline still counts.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":  # the text ended with a newline (or was empty)
        lines.pop()
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def build_vocab(tokens: Iterable[str]) -> list[str]:
    """The vocabulary of ``tokens``: by descending count, then token; ``<unk>`` always in."""
    counts = collections.Counter(tokens)
    counts.setdefault(UNK, 0)
    return sorted(counts, key=lambda t: (-counts[t], t))


def _encode(tokens: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    ids = {t: i for i, t in enumerate(vocab)}
    unk = ids[UNK]
    return np.fromiter((ids.get(t, unk) for t in tokens), dtype=np.int32, count=len(tokens))  # [n_tokens]


def _read_text(path: epath.Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text_file: {path} is not UTF-8 ({e}); the word level needs UTF-8 text.") from e


@dataclasses.dataclass
class TextFileConfig(tfds.core.BuilderConfig):
    """``level``: ``'char'`` (bytes) or ``'word'`` (WikiText-style tokens)."""

    level: str = "char"


class TextFile(tfds.core.GeneratorBasedBuilder):
    """Local text files at the char or word level (see the module docstring)."""

    # tfds derives this from importlib_resources, a package it uses but does not
    # install; this is the value it would compute (no checksums file beside it).
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Char (bytes) and word (WikiText-style) levels, contiguous chunks."
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        TextFileConfig(name="char", level="char", description="Bytes, vocab 256."),
        TextFileConfig(name="word", level="word", description="Whitespace words + <eos> per line."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place in the manual dir either per-split files ({', '.join(n for n, _ in SPLIT_FILE_NAMES.values())}, "
        f"or WikiText's {', '.join(n for _, n in SPLIT_FILE_NAMES.values())}; any present) or a single "
        f"{SINGLE_FILE_NAME} to be split 90/5/5."
    )

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record, not tfds' default tfrecord: its writer and the random-access
        # reader (as_data_source) need no TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        if self.builder_config.level == "word":
            key, dtype = "ids", np.int32
        else:
            key, dtype = "bytes", np.uint8
        return tfds.core.DatasetInfo(
            builder=self,
            description="A local text corpus as one contiguous token stream per split.",
            features=tfds.features.FeaturesDict(
                {
                    "index": np.int64,  # chunk position within the split
                    key: tfds.features.Tensor(shape=(None,), dtype=dtype),  # [<= CHUNK_SIZE]
                }
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # chunks are written, and read, in index order
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = builder_inputs.manual_dir(dl_manager, "text_file")
        files = find_text_files(manual_dir)
        self.info.metadata["source"] = describe_source(manual_dir)
        if self.builder_config.level == "word":
            streams = self._word_streams(files)
        else:
            streams = self._char_streams(files)
        return {split: self._generate_examples(ids) for split, ids in streams.items()}

    def _char_streams(self, files: dict[str, epath.Path]) -> dict[str, np.ndarray]:
        streams = {k: np.frombuffer(p.read_bytes(), dtype=np.uint8) for k, p in files.items()}
        if "text" in streams:
            streams = _split_one(streams.pop("text"))
        return streams

    def _word_streams(self, files: dict[str, epath.Path]) -> dict[str, np.ndarray]:
        if "text" in files:
            tokens = _split_one(tokenize_words(_read_text(files["text"])))
        else:
            if "train" not in files:
                raise FileNotFoundError(
                    f"text_file: the word level builds its vocabulary from the train split, but "
                    f"{files[next(iter(files))].parent} has no {' or '.join(SPLIT_FILE_NAMES['train'])}."
                )
            tokens = {k: tokenize_words(_read_text(p)) for k, p in files.items()}
        vocab = build_vocab(tokens["train"])
        self.info.metadata["vocab"] = vocab
        return {k: _encode(t, vocab) for k, t in tokens.items()}

    def _generate_examples(self, ids: np.ndarray) -> Iterator[tuple[int, dict[str, object]]]:
        key = "ids" if self.builder_config.level == "word" else "bytes"
        # At least one (possibly empty) chunk: tfds refuses a split with no examples.
        for index, start in enumerate(range(0, max(len(ids), 1), CHUNK_SIZE)):
            yield index, {"index": index, key: ids[start : start + CHUNK_SIZE]}


def _split_one(stream):
    """Cuts one stream (array or list) into contiguous 90/5/5 train/valid/test."""
    n_train, n_valid, _ = split_sizes(len(stream))
    return {
        "train": stream[:n_train],
        "valid": stream[n_train : n_train + n_valid],
        "test": stream[n_train + n_valid :],
    }
