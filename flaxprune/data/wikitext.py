"""WikiText-103 and WikiText-2 as tfds datasets, at the word level.

WikiText (Merity, Xiong, Bradbury & Socher, "Pointer Sentinel Mixture
Models", 2016) is text from Wikipedia's Good and Featured articles, already
tokenized, with rare words replaced by ``<unk>``. WikiText-103 has about 103M
training tokens and a vocabulary of about 268k; WikiText-2 about 2M and 33k.
FLOP (Wang, Wohlwend & Lei, EMNLP 2020, Section 4.1) prunes a Transformer-XL
with an adaptive softmax on WikiText-103.

Tokens are those of ``flaxprune.data.text_file``'s word level
(``text_file.word_streams``), as in the AWD-LSTM / Transformer-XL data code:
each line split on whitespace, then ``<eos>``; the vocabulary from train only,
by descending count then token, in ``info.metadata['vocab']`` (id i is
``vocab[i]``), ``<unk>`` kept as given; valid / test words unseen in train
map to ``<unk>``. A file holding a NUL byte or invalid UTF-8, or a split with
no words, is refused, naming the file.

Where the files come from, first present wins (``find_wikitext_input``):

1. The manual dir (``DownloadConfig(manual_dir=...)``, by default
   ``<data_dir>/downloads/manual``): the folder the official zip extracts to
   (``wikitext-103/`` or ``wikitext-2/``), the official zip itself
   (``wikitext-103-v1.zip`` or ``wikitext-2-v1.zip``), or the files directly
   in the manual dir. This config's names come before the bare files, so one
   manual dir can hold both corpora.
2. Otherwise the official zip, downloaded from the config's ``url``.

A zip is read in place (``zip_split_files``), never extracted.

The files are ``wiki.train.tokens`` / ``wiki.valid.tokens`` /
``wiki.test.tokens`` (or ``train.txt`` / ``valid.txt`` / ``test.txt``, so any
corpus laid out the same way can be read); all three are required, train
giving the vocabulary. ``info.metadata['source']`` records them (name and size)
per split, the same whether they were read from a folder, a zip or a download.

Storage as ``TextFile``'s word level: each split one contiguous stream of
``text_file.CHUNK_SIZE``-long examples ``{'index': int64, 'ids': int32[...]}``
in array_record files, read back by ``flaxprune.data.corpus.read_stream``.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flaxprune.data import builder_inputs, text_file

__all__ = [
    "CONFIGS",
    "SPLIT_FILE_NAMES",
    "WikiText",
    "WikiTextConfig",
    "describe_input",
    "describe_source",
    "find_wikitext_input",
    "split_files",
    "zip_split_files",
]

SPLIT_FILE_NAMES = text_file.SPLIT_FILE_NAMES  # per split: plain, then WikiText's name
_ACCEPTED = " / ".join(" or ".join(names) for names in SPLIT_FILE_NAMES.values())


@dataclasses.dataclass
class WikiTextConfig(tfds.core.BuilderConfig):
    """One WikiText corpus: its title, official zip and the folder that zip extracts to."""

    title: str = ""  # for messages: "WikiText-103"
    url: str = ""  # the official zip
    folder: str = ""  # the zip's top folder: "wikitext-103"

    @property
    def archive(self) -> str:
        """The zip's file name, as downloaded: ``wikitext-103-v1.zip``."""
        return self.url.rsplit("/", 1)[-1]


CONFIGS = {
    c.name: c
    for c in (
        WikiTextConfig(
            name="wikitext103",
            description="WikiText-103, word level.",
            title="WikiText-103",
            url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip",
            folder="wikitext-103",
        ),
        WikiTextConfig(
            name="wikitext2",
            description="WikiText-2, word level.",
            title="WikiText-2",
            url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
            folder="wikitext-2",
        ),
    )
}


def _config(name: str) -> WikiTextConfig:
    if name not in CONFIGS:
        raise ValueError(f"wikitext: config={name!r} is not one of {tuple(CONFIGS)}.")
    return CONFIGS[name]


def _holds_split_file(folder: epath.Path) -> bool:
    return any((folder / n).is_file() for names in SPLIT_FILE_NAMES.values() for n in names)


def _split_names(present: Callable[[str], bool], where: str) -> dict[str, str]:
    """Per split, the one accepted file name for which ``present`` holds.

    Raises:
      ValueError: if a split has files under both names.
      FileNotFoundError: if a split has none.
    """
    found: dict[str, str] = {}
    for split, names in SPLIT_FILE_NAMES.items():
        hits = [n for n in names if present(n)]
        if len(hits) > 1:
            raise ValueError(f"wikitext: {where} holds {hits} for the {split!r} split; keep one of them.")
        if not hits:
            raise FileNotFoundError(
                f"wikitext: {where} has no {' or '.join(names)} for the {split!r} split; "
                f"all three splits are needed ({_ACCEPTED}), train for the vocabulary."
            )
        found[split] = hits[0]
    return found


def split_files(folder: str | epath.PathLike) -> dict[str, epath.Path]:
    """The train / valid / test files in ``folder``.

    Raises:
      FileNotFoundError: if a split's file is missing (naming ``folder`` and
        the accepted names).
      ValueError: if a split has files under both names, or a file is empty.
    """
    folder = epath.Path(folder)
    files = {k: folder / n for k, n in _split_names(lambda n: (folder / n).is_file(), str(folder)).items()}
    for path in files.values():
        if path.stat().length == 0:
            raise ValueError(f"wikitext: {path} is empty.")
    return files


def find_wikitext_input(manual_dir: str | epath.PathLike | None, config: str) -> epath.Path | None:
    """Where ``manual_dir`` holds ``config``'s files: a folder or the official zip; None when nowhere.

    Looks at, in order: ``<manual_dir>/<folder>/`` (as the zip extracts),
    ``<manual_dir>/<archive>`` and ``manual_dir`` itself; a folder counts when
    it holds any split file (``split_files`` then wants all three).
    """
    cfg = _config(config)
    if manual_dir is None or not epath.Path(manual_dir).is_dir():
        return None
    root = epath.Path(manual_dir)
    if _holds_split_file(root / cfg.folder):
        return root / cfg.folder
    if (root / cfg.archive).is_file():
        return root / cfg.archive
    return root if _holds_split_file(root) else None


def _zip_members(path: epath.Path, cfg: WikiTextConfig) -> dict[str, zipfile.ZipInfo]:
    """Per split, its member of the zip at ``path``: under ``<folder>/`` if any is there, else at the top."""
    try:
        with path.open("rb") as f, zipfile.ZipFile(f) as archive:
            members = {i.filename: i for i in archive.infolist()}
    except zipfile.BadZipFile as e:
        raise ValueError(f"wikitext: {path} is not a zip archive ({e}); expected {cfg.archive} from {cfg.url}.") from e
    prefix = f"{cfg.folder}/"
    if not any(prefix + n in members for names in SPLIT_FILE_NAMES.values() for n in names):
        prefix = ""
    names = _split_names(lambda n: prefix + n in members, f"{path}:{prefix}")
    found = {k: members[prefix + n] for k, n in names.items()}
    for info in found.values():
        if info.file_size == 0:
            raise ValueError(f"wikitext: {path}:{info.filename} is empty.")
    return found


def zip_split_files(path: str | epath.PathLike, config: str) -> dict[str, zipfile.Path]:
    """The train / valid / test members of a (local) official zip, read in place, never extracted.

    In place rather than through tfds' extractor, which needs TensorFlow;
    ``text_file.word_streams`` reads a member as it reads a file.

    Raises:
      FileNotFoundError, ValueError: as ``split_files``, and for a file that
        is not a zip archive.
    """
    path = epath.Path(path)
    members = _zip_members(path, _config(config))
    return {k: zipfile.Path(os.fspath(path), at=info.filename) for k, info in members.items()}


def describe_input(where: str | epath.PathLike, config: str) -> dict[str, dict[str, object]]:
    """The ``info.metadata['source']`` record of a folder or official zip: per split, file name and size.

    A zip is described by its members, without extracting it, so it reads the
    same as the folder it extracts to.
    """
    where = epath.Path(where)
    if where.is_file():
        members = _zip_members(where, _config(config))
        return {k: {"file": i.filename.rsplit("/", 1)[-1], "bytes": i.file_size} for k, i in members.items()}
    return text_file.describe_files(split_files(where))


def describe_source(manual_dir: str | epath.PathLike, config: str) -> dict[str, dict[str, object]]:
    """``describe_input`` of ``config``'s files in ``manual_dir`` (``find_wikitext_input``).

    Raises:
      FileNotFoundError: if ``manual_dir`` holds none of them (naming what was
        looked for), or a split's file is missing.
      ValueError: for a doubled split, an empty file or a broken zip.
    """
    where = find_wikitext_input(manual_dir, config)
    if where is None:
        cfg = _config(config)
        absent = "" if epath.Path(manual_dir).is_dir() else " (absent)"
        raise FileNotFoundError(
            f"wikitext: no {cfg.title} input in {manual_dir}{absent}; expected {_ACCEPTED} (directly or in "
            f"{cfg.folder}/) or {cfg.archive} (or no manual dir, to download {cfg.url})."
        )
    return describe_input(where, config)


class WikiText(tfds.core.GeneratorBasedBuilder):
    """WikiText-103 / WikiText-2, word level (see the module docstring)."""

    # tfds derives this from importlib_resources, a package it uses but does not
    # install; this is the value it would compute (no checksums file beside it).
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Word level, <eos> per line, contiguous chunks."}
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = list(CONFIGS.values())
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. Place in the manual dir the official zip (wikitext-103-v1.zip or wikitext-2-v1.zip), "
        f"the folder it extracts to (wikitext-103/ or wikitext-2/), or its files ({_ACCEPTED}). "
        "Without them, the zip is downloaded."
    )

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record, not tfds' default tfrecord: its writer and the random-access
        # reader (as_data_source) need no TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.builder_config.title}: Wikipedia articles, word level, one token stream per split.",
            features=text_file.word_chunk_features(),
            homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
            citation="Merity, Xiong, Bradbury, Socher. Pointer Sentinel Mixture Models. arXiv:1609.07843, 2016.",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # chunks are written, and read, in index order
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        manual = builder_inputs.manual_dir(dl_manager, "wikitext", required=False)  # None: absent or empty
        where = find_wikitext_input(manual, cfg.name) or self._download(dl_manager, manual)  # a folder or zip
        self.info.metadata["source"] = describe_input(where, cfg.name)  # fails first for a missing / empty split
        files = zip_split_files(where, cfg.name) if where.is_file() else split_files(where)
        self.info.metadata["vocab"], streams = text_file.word_streams(files, builder="wikitext")
        return {split: self._generate_examples(ids) for split, ids in streams.items()}

    def _download(self, dl_manager: tfds.download.DownloadManager, manual: epath.Path | None) -> epath.Path:
        """The official zip, downloaded (not extracted: see ``zip_split_files``)."""
        cfg = self.builder_config
        try:
            return epath.Path(dl_manager.download(cfg.url))
        except Exception as e:  # Offline, proxy, server: all mean the same to the user.
            reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line
            raise FileNotFoundError(
                f"wikitext: no {cfg.title} files in the manual dir ({manual or 'absent or empty'}) and downloading "
                f"{cfg.url} failed ({reason}). Get {cfg.archive} from there (or a mirror) and place it, the "
                f"{cfg.folder}/ folder it extracts to, or that folder's files ({_ACCEPTED}) in the manual dir "
                "(DownloadConfig(manual_dir=...); by default <data_dir>/downloads/manual)."
            ) from e

    def _generate_examples(self, ids: np.ndarray) -> Iterator[tuple[int, dict[str, object]]]:
        yield from text_file.chunk_examples(ids, "ids")
