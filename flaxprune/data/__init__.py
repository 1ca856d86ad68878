"""Data: corpora and batching (no TensorFlow needed)."""

from flaxprune.data.stdlib_corpus import split_bytes, stdlib_text

__all__ = ["split_bytes", "stdlib_text"]
