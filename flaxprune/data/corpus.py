"""One call from a corpus name to train / valid / test token arrays.

``load_corpus('enwik8' | 'text_char' | 'text_word' | 'wikitext103' | 'wikitext2' |
'stdlib', data_dir, ...)`` prepares the tfds dataset in ``data_dir`` when it
is not prepared yet, reads each split back through ``as_data_source``
(array_record, no TensorFlow) and returns a ``Corpus`` of int32 arrays;
word-level corpora (``WORD_CORPORA``: ``text_word`` and the WikiTexts) carry
their vocabulary. Inputs are checked first, so a missing or empty file fails
here, naming the path, before any training starts.

A prepared dataset is reused as long as it is there. A data dir prepared from
one input keeps serving it: passing a ``manual_dir`` whose files differ (by
name or size) from those recorded at preparation raises rather than quietly
returning the old data; use a fresh ``data_dir`` per input.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flaxprune.data import enwik8 as enwik8_lib
from flaxprune.data import text_file as text_file_lib
from flaxprune.data import wikitext as wikitext_lib
from flaxprune.data.stdlib_builder import StdlibCorpus

__all__ = ["BYTE_VOCABS", "CORPUS_NAMES", "WORD_CORPORA", "Corpus", "corpus_symbols", "load_corpus", "read_stream"]

CORPUS_NAMES = ("enwik8", "text_char", "text_word", "wikitext103", "wikitext2", "stdlib")
WORD_CORPORA = ("text_word", "wikitext103", "wikitext2")  # ids are words, from a vocabulary
BYTE_VOCAB_SIZE = 256
BYTE_VOCABS = ("bytes", "corpus")  # byte-level ids: every byte value, or the symbols of the training split


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Corpus:
    """A language-modelling corpus as three contiguous token streams.

    Attributes:
      train: int32 token ids, ``[n_train]``.
      valid: int32 token ids, ``[n_valid]`` (``[0]`` where the input had no
        valid split).
      test: int32 token ids, ``[n_test]`` (likewise).
      vocab_size: the number of ids: 256 for bytes, ``len(vocab)`` for words.
      vocab: for word level, the tokens by id (``vocab[i]`` is id ``i``);
        None for byte level, where id ``i`` is byte value ``i``.
      symbols: byte level with ``vocab='corpus'``: the byte values by id
        (``symbols[i]`` is id ``i``; the last id, ``len(symbols)``, stands for
        every byte that train does not hold); None otherwise.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab_size: int
    vocab: tuple[str, ...] | None = None
    symbols: tuple[int, ...] | None = None


def read_stream(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
    """Reads one split of a prepared chunked builder back as a single stream.

    Args:
      builder: a prepared ``Enwik8``, ``TextFile``, ``WikiText`` or ``StdlibCorpus``.
      split: ``'train'``, ``'valid'`` or ``'test'``.

    Returns:
      The split's ids, ``[n_tokens]``, chunks concatenated in ``index`` order;
      uint8 for bytes, int32 for words.
    """
    source = builder.as_data_source(split=split)
    (key,) = [k for k in builder.info.features if k != "index"]  # 'bytes' or 'ids'
    chunks = sorted((source[i] for i in range(len(source))), key=lambda ex: ex["index"])
    dtype = builder.info.features[key].np_dtype
    return np.concatenate([np.asarray(c[key], dtype=dtype) for c in chunks])


def corpus_symbols(train: np.ndarray, *splits: np.ndarray) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """The byte values of ``train`` in byte order, and every split (train first) mapped to their ids.

    A byte that ``train`` does not hold (seen first in valid or test) maps to
    the one extra id ``len(symbols)``, so the vocabulary, and the model's
    size, depend on the training split only.
    """
    symbols = np.unique(np.asarray(train, np.int64))
    table = np.full(BYTE_VOCAB_SIZE, len(symbols), np.int32)
    table[symbols] = np.arange(len(symbols), dtype=np.int32)
    return tuple(int(b) for b in symbols), [table[np.asarray(a, np.int64)] for a in (train, *splits)]


def _check_source(builder: tfds.core.DatasetBuilder, expected: dict, name: str) -> None:
    recorded = builder.info.metadata.get("source")
    if recorded != expected:
        raise ValueError(
            f"load_corpus({name!r}): {builder.data_dir} was prepared from {recorded}, but the manual_dir "
            f"now holds {expected}. Use a fresh data_dir for a different input (or delete that one)."
        )


def load_corpus(
    name: str,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    *,
    max_bytes: int | None = None,
    vocab: str | None = None,
) -> Corpus:
    """Loads a corpus as int32 arrays, preparing its tfds dataset if needed.

    Args:
      name: one of ``CORPUS_NAMES``: ``'enwik8'`` (``Enwik8``; from
        ``manual_dir`` when given, else downloaded), ``'text_char'`` /
        ``'text_word'`` (``TextFile`` configs ``char`` / ``word``; input
        files from ``manual_dir``, by default ``<data_dir>/downloads/manual``),
        ``'wikitext103'`` / ``'wikitext2'`` (``WikiText`` configs; from
        ``manual_dir`` when given, else the default manual dir or a download)
        or ``'stdlib'`` (``StdlibCorpus``; no input).
      data_dir: where tfds keeps prepared datasets.
      manual_dir: the directory holding the input files. For ``'enwik8'``
        and the WikiTexts, giving it means "use the files there": they are
        not downloaded then.
        Must be None for ``'stdlib'``.
      max_bytes: ``'stdlib'`` only: how many bytes of the standard library
        to take (default ``stdlib_builder.DEFAULT_MAX_BYTES``).
      vocab: byte-level corpora only (a word corpus's vocabulary is its
        training words): ``'bytes'`` (the default: id ``i`` is
        byte ``i``, 256 ids) or ``'corpus'`` (the symbols of the training
        split, in byte order, plus one id for bytes first seen in valid or
        test; :func:`corpus_symbols`), as the original FLOP code does.

    Returns:
      A ``Corpus``; bytes are widened to int32 (the full enwik8 then takes
      400 MB).

    Raises:
      ValueError: for an unknown ``name``, an option the corpus does not take,
        an empty input file, or a ``manual_dir`` whose files differ from the
        ones ``data_dir`` was prepared from.
      FileNotFoundError: if the input files are missing (naming the path and
        the accepted file names), or need downloading and that fails.
    """
    data_dir = os.fspath(data_dir)
    if name not in CORPUS_NAMES:
        raise ValueError(f"load_corpus: name={name!r} is not one of {CORPUS_NAMES}.")
    if max_bytes is not None and name != "stdlib":
        raise ValueError(f"load_corpus({name!r}): max_bytes={max_bytes} only applies to 'stdlib'.")
    if name == "stdlib" and manual_dir is not None:
        raise ValueError(f"load_corpus('stdlib'): manual_dir={manual_dir!r} must be None; it reads no files.")
    if vocab is not None and (name in WORD_CORPORA or vocab not in BYTE_VOCABS):
        accepted = "None (a word corpus's vocabulary is its training words)" if name in WORD_CORPORA else BYTE_VOCABS
        raise ValueError(f"load_corpus({name!r}): vocab={vocab!r} is not accepted; accepted: {accepted}.")

    expected = None  # the input files, recorded in info.metadata['source'] at preparation
    if name == "stdlib":
        builder = StdlibCorpus(data_dir=data_dir, max_bytes=max_bytes)
    elif name == "enwik8":
        builder = enwik8_lib.Enwik8(data_dir=data_dir)
        if manual_dir is not None:
            path = enwik8_lib.find_enwik8_file(manual_dir)
            if path is None:
                raise FileNotFoundError(
                    f"load_corpus('enwik8'): no input file in manual_dir={os.fspath(manual_dir)!r}; expected one of "
                    f"{enwik8_lib.MANUAL_FILE_NAMES} (or manual_dir=None to download {enwik8_lib.URL})."
                )
            if path.stat().length == 0:
                raise ValueError(f"load_corpus('enwik8'): {path} is empty.")
            expected = enwik8_lib.describe_source(path)
    elif name in wikitext_lib.CONFIGS:
        builder = wikitext_lib.WikiText(config=name, data_dir=data_dir)
        if manual_dir is not None:
            expected = wikitext_lib.describe_source(manual_dir, name)  # raises for no input, a missing / empty split
    else:
        builder = text_file_lib.TextFile(config=name.removeprefix("text_"), data_dir=data_dir)
        if manual_dir is not None or not builder.is_prepared():
            where = manual_dir if manual_dir is not None else epath.Path(data_dir) / "downloads" / "manual"
            expected = text_file_lib.describe_source(where)  # raises for missing / empty files

    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir is not None else None)
        builder.download_and_prepare(download_config=config)
    if expected is not None:
        _check_source(builder, expected, name)

    splits = {
        s: read_stream(builder, s) if s in builder.info.splits else np.zeros(0, np.int32)
        for s in ("train", "valid", "test")
    }
    arrays = {s: a.astype(np.int32, copy=False) for s, a in splits.items()}
    if name in WORD_CORPORA:
        words = tuple(builder.info.metadata["vocab"])
        return Corpus(**arrays, vocab_size=len(words), vocab=words)
    if vocab == "corpus":
        symbols, (train, valid, test) = corpus_symbols(arrays["train"], arrays["valid"], arrays["test"])
        return Corpus(train, valid, test, vocab_size=len(symbols) + 1, symbols=symbols)
    return Corpus(**arrays, vocab_size=BYTE_VOCAB_SIZE)
