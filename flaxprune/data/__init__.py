"""Data: corpora and batching (no TensorFlow needed).

The tfds builders, ``load_corpus`` / ``load_glue``, the GLUE metrics and the
WordPiece tokenizer are imported on first use: importing
tensorflow_datasets takes about a second, which ``from flaxprune.data import
stdlib_text`` (the demo) should not pay.
"""

import importlib

from flaxprune.data.batching import Batch, StreamBatcher, batchify, num_segments
from flaxprune.data.example_batching import ExampleBatcher, eval_batches
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
    "GLUE_TASKS": "flaxprune.data.glue",
    "Glue": "flaxprune.data.glue",
    "GlueTask": "flaxprune.data.glue",
    "load_glue": "flaxprune.data.glue",
    "primary_metric": "flaxprune.data.glue_metrics",
    "task_metrics": "flaxprune.data.glue_metrics",
    "WordPieceTokenizer": "flaxprune.data.tokenizer",
}

__all__ = [
    "CORPUS_NAMES",
    "GLUE_TASKS",
    "Batch",
    "Corpus",
    "Enwik8",
    "ExampleBatcher",
    "Glue",
    "GlueTask",
    "StdlibCorpus",
    "StreamBatcher",
    "TextFile",
    "WordPieceTokenizer",
    "batchify",
    "enwik8_split_sizes",
    "eval_batches",
    "load_corpus",
    "load_glue",
    "num_segments",
    "primary_metric",
    "read_stream",
    "split_bytes",
    "stdlib_text",
    "task_metrics",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
