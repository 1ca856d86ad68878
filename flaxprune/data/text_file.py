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
  (int32). Files must be UTF-8 text: one holding a NUL byte (binary, or
  UTF-16) or invalid UTF-8 is refused, and so is an input split with no
  words (only whitespace). ``word_streams`` is this level as one function,
  shared with ``flaxprune.data.wikitext``. (The char level takes any bytes.)

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

import array
import collections
import dataclasses
import zipfile
from collections.abc import Iterable, Iterator, Mapping
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
    "chunk_examples",
    "describe_files",
    "describe_source",
    "find_text_files",
    "split_sizes",
    "tokenize_words",
    "word_chunk_features",
    "word_streams",
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


def describe_files(files: Mapping[str, epath.Path]) -> dict[str, dict[str, object]]:
    """The record kept in ``info.metadata['source']``: per split, file name and size in bytes."""
    return {k: {"file": p.name, "bytes": p.stat().length} for k, p in files.items()}


def describe_source(manual_dir: str | epath.PathLike) -> dict[str, dict[str, object]]:
    """``describe_files`` of the input files in ``manual_dir`` (``find_text_files``)."""
    return describe_files(find_text_files(manual_dir))


def _lines(text: str) -> list[str]:
    """The lines of ``text`` as Python's text files split them (universal newlines), without the ends."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":  # the text ended with a newline (or was empty)
        lines.pop()
    return lines


def tokenize_words(text: str) -> list[str]:
    """WikiText-style tokens: each line's whitespace-separated words, then ``<eos>``.

    Lines are split as Python's text files do (universal newlines); a final
    line without a newline still counts.
    """
    tokens: list[str] = []
    for line in _lines(text):
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def build_vocab(tokens: Iterable[str]) -> list[str]:
    """The vocabulary of ``tokens``: by descending count, then token; ``<unk>`` always in."""
    counts = collections.Counter(tokens)
    counts.setdefault(UNK, 0)
    return sorted(counts, key=lambda t: (-counts[t], t))


def _read_text(path: epath.Path | zipfile.Path, builder: str) -> str:
    """The UTF-8 text of ``path``; refuses a binary file (a NUL byte) or invalid UTF-8."""
    data = path.read_bytes()
    nul = data.find(b"\x00")
    if nul >= 0:  # text never holds NUL; binary files and UTF-16 do
        raise ValueError(
            f"{builder}: {path} holds a NUL byte (at byte {nul}), so it is binary, not text; "
            "the word level needs UTF-8 text."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{builder}: {path} is not UTF-8 ({e}); the word level needs UTF-8 text.") from e


def _first_seen_ids(text: str, table: collections.defaultdict) -> np.ndarray:
    """``tokenize_words(text)`` as provisional ids from ``table``, which gives each token it lacks the next id.

    Ids rather than a token list: WikiText-103's 10^8 train tokens take 400 MB
    as int32, several GB as Python strings.
    """
    lookup, eos = table.__getitem__, table[EOS]
    ids = array.array("i")
    for line in _lines(text):
        ids.extend(map(lookup, line.split()))
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)  # [n_tokens]


def _read_words(path: epath.Path | zipfile.Path, table: collections.defaultdict, builder: str) -> np.ndarray:
    """One input file as provisional ids (``_first_seen_ids``); refuses a file with no words."""
    ids = _first_seen_ids(_read_text(path, builder), table)  # [n_tokens]
    if not (ids != table[EOS]).any():
        raise ValueError(
            f"{builder}: {path} is an empty split: it holds no words, only whitespace; the word level needs text."
        )
    return ids


def _vocab_from_train(table: collections.defaultdict, train: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``build_vocab`` of the train ids, and the map from provisional id to vocabulary id.

    A token that train does not hold (seen only in valid / test) maps to ``<unk>``.
    """
    unk = table[UNK]  # always in the vocabulary, with count 0 if train lacks it
    tokens = list(table)  # by provisional id: the table hands out ids in insertion order
    counts = np.bincount(train, minlength=len(tokens)).tolist()
    kept = sorted((i for i, c in enumerate(counts) if c > 0 or i == unk), key=lambda i: (-counts[i], tokens[i]))
    remap = np.full(len(tokens), kept.index(unk), dtype=np.int32)
    remap[kept] = np.arange(len(kept), dtype=np.int32)
    return [tokens[i] for i in kept], remap


def word_streams(
    files: Mapping[str, epath.Path | zipfile.Path], *, builder: str = "text_file"
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The word level of the module docstring: the vocabulary and each split's ids.

    The same as ``tokenize_words`` on each file, ``build_vocab`` on train and
    every token looked up (``<unk>`` when train lacks it), in far less memory.

    Args:
      files: ``find_text_files``' result: ``{split: path}`` with a
        ``'train'`` among them, or ``{'text': path}``, split 90/5/5 by tokens.
        A path may be a zip member (``zipfile.Path``), read in place.
      builder: the name that starts each error message.

    Returns:
      ``(vocab, {split: ids})``: ``vocab[i]`` is the token of id ``i``; ids
      are int32, ``[n_tokens]``.

    Raises:
      FileNotFoundError: if per-split ``files`` have no ``'train'``.
      ValueError: for a file holding a NUL byte, invalid UTF-8 or no words.
    """
    table = collections.defaultdict()
    table.default_factory = table.__len__  # a new token gets the next id
    if "text" in files:
        ids = _split_one(_read_words(files["text"], table, builder))
    else:
        if "train" not in files:
            raise FileNotFoundError(
                f"{builder}: the word level builds its vocabulary from the train split, but "
                f"{files[next(iter(files))].parent} has no {' or '.join(SPLIT_FILE_NAMES['train'])}."
            )
        ids = {k: _read_words(p, table, builder) for k, p in files.items()}
    vocab, remap = _vocab_from_train(table, ids["train"])
    return vocab, {k: remap[v] for k, v in ids.items()}


def word_chunk_features() -> tfds.features.FeaturesDict:
    """A word-level split stored as ordered chunks (shared by the word-level builders)."""
    return tfds.features.FeaturesDict(
        {
            "index": np.int64,  # chunk position within the split
            "ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),  # [<= CHUNK_SIZE]
        }
    )


def chunk_examples(stream: np.ndarray, key: str) -> Iterator[tuple[int, dict[str, object]]]:
    """One split's examples: ``{'index': i, key: stream[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE]}`` in order.

    At least one (possibly empty) chunk: tfds refuses a split with no examples.
    """
    for index, start in enumerate(range(0, max(len(stream), 1), CHUNK_SIZE)):
        yield index, {"index": index, key: stream[start : start + CHUNK_SIZE]}


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
            features = word_chunk_features()
        else:
            features = tfds.features.FeaturesDict(
                {
                    "index": np.int64,  # chunk position within the split
                    "bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8),  # [<= CHUNK_SIZE]
                }
            )
        return tfds.core.DatasetInfo(
            builder=self,
            description="A local text corpus as one contiguous token stream per split.",
            features=features,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # chunks are written, and read, in index order
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = builder_inputs.manual_dir(dl_manager, "text_file")
        files = find_text_files(manual_dir)
        self.info.metadata["source"] = describe_files(files)
        if self.builder_config.level == "word":
            self.info.metadata["vocab"], streams = word_streams(files)
        else:
            streams = self._char_streams(files)
        return {split: self._generate_examples(ids) for split, ids in streams.items()}

    def _char_streams(self, files: dict[str, epath.Path]) -> dict[str, np.ndarray]:
        streams = {k: np.frombuffer(p.read_bytes(), dtype=np.uint8) for k, p in files.items()}
        if "text" in streams:
            streams = _split_one(streams.pop("text"))
        return streams

    def _generate_examples(self, ids: np.ndarray) -> Iterator[tuple[int, dict[str, object]]]:
        yield from chunk_examples(ids, "ids" if self.builder_config.level == "word" else "bytes")


def _split_one(stream):
    """Cuts one stream (array or list) into contiguous 90/5/5 train/valid/test."""
    n_train, n_valid, _ = split_sizes(len(stream))
    return {
        "train": stream[:n_train],
        "valid": stream[n_train : n_train + n_valid],
        "test": stream[n_train + n_valid :],
    }
