"""What the tfds builders that read local files share: finding their input folder.

``Glue`` and ``TextFile`` read files a user supplies (the manual dir of
``tfds.download.DownloadConfig``); ``Enwik8`` reads one there or downloads it. tfds signals an absent or empty manual
dir with an ``AssertionError``; a user's missing data is a
``FileNotFoundError`` that names the builder.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

__all__ = ["manual_dir"]


def manual_dir(dl_manager: tfds.download.DownloadManager, builder: str, required: bool = True) -> epath.Path | None:
    """The manual dir of ``dl_manager``; None when it is absent or empty and not ``required``.

    Args:
      dl_manager: the download manager tfds passes to ``_split_generators``.
      builder: the builder's name, for the message.
      required: False where the builder can download its input instead (enwik8).

    Raises:
      FileNotFoundError: ``"<builder>: <tfds' reason>"`` when a required dir is absent or empty.
    """
    try:
        return dl_manager.manual_dir
    except AssertionError as e:  # tfds' message for an absent or empty dir
        if not required:
            return None
        raise FileNotFoundError(f"{builder}: {e}") from e
