"""Enwik8 builder on small local files: splits, sources, errors; never the network."""

import pathlib
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flaxprune.data import enwik8
from flaxprune.data.corpus import read_stream
from flaxprune.data.stdlib_corpus import split_bytes

SHARED_LM = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lm"


def _random_bytes(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def _prepare(data_dir, manual_dir):
    builder = enwik8.Enwik8(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _splits(builder):
    return {s: read_stream(builder, s) for s in ("train", "valid", "test")}


@pytest.fixture
def no_network(monkeypatch):
    """Makes any download attempt fail at once, as it does offline."""

    def refuse(self, url):
        raise ConnectionError(f"test: no network for {url}")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)


def test_split_sizes_full_enwik8_is_the_papers():
    assert enwik8.enwik8_split_sizes(10**8) == (90_000_000, 5_000_000, 5_000_000)


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, (0, 0, 0)),
        (19, (19, 0, 0)),
        (20, (18, 1, 1)),
        (12345, (11111, 617, 617)),
        (1_000_000, (900_000, 50_000, 50_000)),
        (10**8 + 1, (90_000_001, 5_000_000, 5_000_000)),
    ],
)
def test_split_sizes_small_files_90_5_5(n, expected):
    assert enwik8.enwik8_split_sizes(n) == expected
    if n <= 10**6:  # the same sizes as the embedded corpus' split_bytes
        assert tuple(len(a) for a in split_bytes(bytes(n)).values()) == expected


def test_split_sizes_rejects_negative():
    with pytest.raises(ValueError, match="n_bytes=-1"):
        enwik8.enwik8_split_sizes(-1)


def test_splits_are_contiguous_and_concatenate_to_the_file(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(enwik8, "CHUNK_SIZE", 97)  # many chunks, to check their order
    data = _random_bytes(12345)
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "enwik8").write_bytes(data)
    builder = _prepare(tmp_path / "data", tmp_path / "manual")
    splits = _splits(builder)
    assert {s: len(a) for s, a in splits.items()} == {"train": 11111, "valid": 617, "test": 617}
    assert all(a.dtype == np.uint8 for a in splits.values())
    assert np.concatenate(list(splits.values())).tobytes() == data
    assert builder.info.splits["train"].num_examples == -(-11111 // 97)
    assert builder.info.metadata["source"] == {"file": "enwik8", "bytes": 12345}
    # A fresh builder on the same data_dir reads the prepared data, with its metadata.
    again = enwik8.Enwik8(data_dir=str(tmp_path / "data"))
    assert again.is_prepared() and again.info.metadata["source"]["bytes"] == 12345
    np.testing.assert_array_equal(read_stream(again, "valid"), splits["valid"])


def test_zip_in_manual_dir(tmp_path, no_network):
    data = _random_bytes(3000, seed=1)
    (tmp_path / "manual").mkdir()
    with zipfile.ZipFile(tmp_path / "manual" / "enwik8.zip", "w") as archive:
        archive.writestr("enwik8", data)
    splits = _splits(_prepare(tmp_path / "data", tmp_path / "manual"))
    assert np.concatenate(list(splits.values())).tobytes() == data


def test_download_path_reads_the_downloaded_zip_in_place(tmp_path, monkeypatch):
    """The official zip, downloaded under a name of tfds' choosing, is read without extracting it (no TensorFlow)."""
    data = _random_bytes(2000, seed=2)
    blob = tmp_path / "downloads" / "mattmahoney.net_dc_enwik8_blob"  # not named .zip
    blob.parent.mkdir()
    with zipfile.ZipFile(blob, "w") as archive:
        archive.writestr("enwik8", data)
    urls = []

    def fake_download(self, url):
        urls.append(url)
        return blob

    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    builder = enwik8.Enwik8(data_dir=str(tmp_path / "data"))
    builder.download_and_prepare()  # no manual dir: download
    assert urls == [enwik8.URL]
    assert np.concatenate(list(_splits(builder).values())).tobytes() == data


def test_find_file_order(tmp_path):
    assert enwik8.find_enwik8_file(tmp_path) is None
    assert enwik8.find_enwik8_file(tmp_path / "absent") is None
    assert enwik8.find_enwik8_file(None) is None
    (tmp_path / "enwik6").write_bytes(b"x")
    assert enwik8.find_enwik8_file(tmp_path).name == "enwik6"
    (tmp_path / "enwik8.zip").write_bytes(b"x")
    assert enwik8.find_enwik8_file(tmp_path).name == "enwik8.zip"
    (tmp_path / "enwik8").write_bytes(b"x")
    assert enwik8.find_enwik8_file(tmp_path).name == "enwik8"


def test_missing_file_names_manual_dir_and_url(tmp_path, no_network):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "unrelated.txt").write_bytes(b"not enwik8")
    with pytest.raises(FileNotFoundError, match=f"{manual}.*{enwik8.URL}"):
        _prepare(tmp_path / "data", manual)


def test_empty_file_names_path(tmp_path, no_network):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "enwik8").write_bytes(b"")
    with pytest.raises(ValueError, match=f"{manual / 'enwik8'} is empty"):
        _prepare(tmp_path / "data", manual)


def test_read_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "enwik8")):
        enwik8.read_enwik8_file(tmp_path / "enwik8")
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as archive:
        archive.writestr("a", b"1")
        archive.writestr("b", b"2")
    with pytest.raises(ValueError, match="member named 'enwik8'"):
        enwik8.read_enwik8_file(tmp_path / "enwik8.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("enwik8", b"")
    with pytest.raises(ValueError, match="other.zip:enwik8 is empty"):
        enwik8.read_enwik8_file(tmp_path / "other.zip")


def test_shared_enwik6(tmp_path, no_network):
    """The 1 MB prefix in ../shared/data/lm, read in place (never copied here)."""
    path = SHARED_LM / "enwik6"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    builder = _prepare(tmp_path / "data", SHARED_LM)
    splits = _splits(builder)
    assert {s: len(a) for s, a in splits.items()} == {"train": 900_000, "valid": 50_000, "test": 50_000}
    assert np.concatenate(list(splits.values())).tobytes() == path.read_bytes()
    assert builder.info.metadata["source"] == {"file": "enwik6", "bytes": 1_000_000}
