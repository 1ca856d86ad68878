"""Data: corpora and batching (no TensorFlow needed).

The tfds builders and ``load_corpus`` are imported on first use: importing
tensorflow_datasets takes about a second, which ``from flaxprune.data import
stdlib_text`` (the demo) should not pay.
"""

import importlib

from flaxprune.data.batching import Batch, StreamBatcher, batchify, num_segments
from flaxprune.data.stdlib_corpus import split_bytes, stdlib_text

_LAZY = {
    "CORPUS_NAMES": "flaxprune.data.corpus",
    "Corpus": "flaxprune.data.corpus",
    "load_corpus": "flaxprune.data.corpus",
    "read_stream": "flaxprune.data.corpus",
    "Enwik8": "flaxprune.data.enwik8",
    "enwik8_split_sizes": "flaxprune.data.enwik8",
    "StdlibCorpus": "flaxprune.data.stdlib_builder",
    "TextFile": "flaxprune.data.text_file",
}

__all__ = [
    "CORPUS_NAMES",
    "Batch",
    "Corpus",
    "Enwik8",
    "StdlibCorpus",
    "StreamBatcher",
    "TextFile",
    "batchify",
    "enwik8_split_sizes",
    "load_corpus",
    "num_segments",
    "read_stream",
    "split_bytes",
    "stdlib_text",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
