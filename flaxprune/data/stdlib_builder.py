"""The embedded default corpus (Python's standard-library sources) as a tfds dataset.

Byte level (vocab 256): ``stdlib_text(max_bytes)`` split 90% / 5% / 5%
contiguously by ``split_bytes``, with no download and no manual dir, so it
works offline on every machine. The text, hence the dataset, is
deterministic for a given Python version and differs between versions; the
config name therefore holds both the version and ``max_bytes``
(``py3.11.7-2000000``), so a data dir shared by two Pythons keeps two
datasets instead of serving one's bytes to the other. ``info.metadata``
records ``python_version`` and ``max_bytes``.

Storage as in ``flaxprune.data.enwik8``: per split, examples
``{'index': int64, 'bytes': uint8[<= CHUNK_SIZE]}`` read back in index order.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flaxprune.data.enwik8 import CHUNK_SIZE, byte_chunk_features
from flaxprune.data.stdlib_corpus import split_bytes, stdlib_text

__all__ = ["CHUNK_SIZE", "DEFAULT_MAX_BYTES", "StdlibCorpus", "StdlibCorpusConfig", "stdlib_config"]

DEFAULT_MAX_BYTES = 2_000_000  # stdlib_text's default


@dataclasses.dataclass(eq=False)
class StdlibCorpusConfig(tfds.core.BuilderConfig):
    """``max_bytes``: how much of ``stdlib_text`` to take (>= 1)."""

    max_bytes: int = DEFAULT_MAX_BYTES


def stdlib_config(max_bytes: int = DEFAULT_MAX_BYTES) -> StdlibCorpusConfig:
    """The config for this Python and ``max_bytes``.

    Raises:
      ValueError: if ``max_bytes`` < 1.
    """
    if max_bytes < 1:
        raise ValueError(f"StdlibCorpus: max_bytes={max_bytes} must be >= 1.")
    return StdlibCorpusConfig(
        name=f"py{platform.python_version()}-{max_bytes}",
        max_bytes=max_bytes,
        description=f"The first {max_bytes} bytes of Python {platform.python_version()}'s standard library.",
    )


class StdlibCorpus(tfds.core.GeneratorBasedBuilder):
    """Python's standard-library sources, byte level (see the module docstring).

    ``StdlibCorpus(data_dir=..., max_bytes=n)`` selects the config for
    ``n`` bytes; the default config takes ``DEFAULT_MAX_BYTES``.
    """

    # tfds derives this from importlib_resources, a package it uses but does not
    # install; this is the value it would compute (no checksums file beside it).
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Byte level, split_bytes 90/5/5, contiguous chunks."}
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [stdlib_config()]

    def __init__(self, *, max_bytes: int | None = None, file_format: str = "array_record", **kwargs):
        if max_bytes is not None and "config" in kwargs:
            raise ValueError("StdlibCorpus: pass max_bytes or config, not both.")
        if max_bytes is not None:
            # tfds refuses a fresh config object named like a class one: reuse it.
            default = self.BUILDER_CONFIGS[0]
            kwargs["config"] = default if max_bytes == default.max_bytes else stdlib_config(max_bytes)
        # array_record: its writer and reader (as_data_source) need no TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Python standard-library sources, byte level; deterministic per Python version.",
            features=byte_chunk_features(),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # chunks are written, and read, in index order
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        max_bytes = self.builder_config.max_bytes
        self.info.metadata["python_version"] = platform.python_version()
        self.info.metadata["max_bytes"] = max_bytes
        parts = split_bytes(stdlib_text(max_bytes))  # {split: uint8[n_split]}
        return {split: self._generate_examples(data) for split, data in parts.items()}

    def _generate_examples(self, data: np.ndarray) -> Iterator[tuple[int, dict[str, object]]]:
        # At least one (possibly empty) chunk: tfds refuses a split with no examples.
        for index, start in enumerate(range(0, max(len(data), 1), CHUNK_SIZE)):
            yield index, {"index": index, "bytes": data[start : start + CHUNK_SIZE]}
