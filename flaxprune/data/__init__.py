"""Data: corpora and batching (no TensorFlow needed).

The tfds builders, ``load_corpus`` / ``load_glue``, the GLUE metrics and the
WordPiece tokenizer are imported on first use: importing
tensorflow_datasets takes about a second, which ``from flaxprune.data import
stdlib_text`` (the demo) should not pay.
"""

import lazy_loader

from flaxprune.data.batching import Batch, StreamBatcher, batchify, num_segments
from flaxprune.data.example_batching import ExampleBatcher, eval_batches
from flaxprune.data.stdlib_corpus import split_bytes, stdlib_text

_LAZY = {  # submodule -> the names it gives, imported on first use
    "corpus": ["BYTE_VOCABS", "CORPUS_NAMES", "Corpus", "corpus_symbols", "load_corpus", "read_stream"],
    "enwik8": ["Enwik8", "enwik8_split_sizes"],
    "stdlib_builder": ["StdlibCorpus"],
    "text_file": ["TextFile"],
    "wikitext": ["WikiText"],
    "glue": ["GLUE_TASKS", "Glue", "GlueTask", "load_glue"],
    "glue_metrics": ["primary_metric", "task_metrics"],
    "tokenizer": ["WordPieceTokenizer"],
}

__getattr__, _, _ = lazy_loader.attach(__name__, submod_attrs=_LAZY)

__all__ = [
    "BYTE_VOCABS",
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
    "WikiText",
    "WordPieceTokenizer",
    "batchify",
    "corpus_symbols",
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


def __dir__():
    return __all__  # the eager names too (lazy_loader's own lists only the lazy ones)
