"""StdlibCorpus: the embedded corpus as a tfds dataset, deterministic per Python."""

import platform

import numpy as np
import pytest

from flaxprune.data import stdlib_builder
from flaxprune.data.corpus import read_stream
from flaxprune.data.stdlib_corpus import split_bytes, stdlib_text

MAX_BYTES = 40_000


def _prepared(data_dir):
    builder = stdlib_builder.StdlibCorpus(data_dir=str(data_dir), max_bytes=MAX_BYTES)
    builder.download_and_prepare()
    return builder


def test_equals_split_bytes_and_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(stdlib_builder, "CHUNK_SIZE", 4096)  # several chunks per split
    first, second = _prepared(tmp_path / "a"), _prepared(tmp_path / "b")
    expected = split_bytes(stdlib_text(MAX_BYTES))
    for split, want in expected.items():
        a, b = read_stream(first, split), read_stream(second, split)
        np.testing.assert_array_equal(a, want)
        np.testing.assert_array_equal(a, b)
    assert first.info.splits["train"].num_examples == -(-len(expected["train"]) // 4096)


def test_config_and_metadata_name_the_python(tmp_path):
    builder = _prepared(tmp_path)
    assert builder.builder_config.name == f"py{platform.python_version()}-{MAX_BYTES}"
    assert builder.info.metadata["python_version"] == platform.python_version()
    assert builder.info.metadata["max_bytes"] == MAX_BYTES


def test_default_config_is_the_class_one(tmp_path):
    default = stdlib_builder.StdlibCorpus.BUILDER_CONFIGS[0]
    assert default.max_bytes == stdlib_builder.DEFAULT_MAX_BYTES
    for kwargs in ({}, {"max_bytes": stdlib_builder.DEFAULT_MAX_BYTES}):
        assert stdlib_builder.StdlibCorpus(data_dir=str(tmp_path), **kwargs).builder_config is default


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_bytes=0 must be >= 1"):
        stdlib_builder.StdlibCorpus(data_dir=str(tmp_path), max_bytes=0)
    with pytest.raises(ValueError, match="max_bytes or config"):
        stdlib_builder.StdlibCorpus(data_dir=str(tmp_path), max_bytes=10, config=stdlib_builder.stdlib_config(10))
