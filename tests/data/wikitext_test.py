"""WikiText builder on tiny local files: layouts, vocabulary, load_corpus, errors; never the network."""

import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flaxprune.data import load_corpus, text_file, wikitext
from flaxprune.data.corpus import read_stream

TRAIN = "the cat\nthe dog <unk>\n\n"  # 3 lines
VALID = "the bird\n"
TEST = "dog cat\n"
# Train counts: <eos> 3, the 2, then 1 each for <unk>, cat, dog ('<' sorts before letters).
VOCAB = ["<eos>", "the", "<unk>", "cat", "dog"]
IDS = {"train": [1, 3, 0, 1, 4, 2, 0, 0], "valid": [1, 2, 0], "test": [4, 3, 0]}  # 'bird' is not in train
FILES = {"wiki.train.tokens": TRAIN, "wiki.valid.tokens": VALID, "wiki.test.tokens": TEST}
SOURCE = {s: {"file": f"wiki.{s}.tokens", "bytes": len(t)} for s, t in zip(IDS, (TRAIN, VALID, TEST))}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Makes any download attempt fail at once, as it does offline."""

    def refuse(self, url):
        raise ConnectionError(f"test: no network for {url}")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", refuse)


def _write(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return directory


def _zip(path, files, folder):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(f"{folder}/{name}", text)
    return path


def _prepare(tmp_path, manual, config="wikitext2"):
    builder = wikitext.WikiText(config=config, data_dir=str(tmp_path / "data"))
    manual_dir = str(manual) if manual is not None else None
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def _splits(builder):
    return {s: read_stream(builder, s).tolist() for s in ("train", "valid", "test")}


def test_flat_files_vocab_by_frequency_and_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(text_file, "CHUNK_SIZE", 3)  # several chunks per split
    builder = _prepare(tmp_path, _write(tmp_path / "manual", FILES))
    vocab = builder.info.metadata["vocab"]
    assert vocab == VOCAB
    splits = _splits(builder)
    assert splits == IDS
    assert splits["train"].count(vocab.index("<eos>")) == TRAIN.count("\n")  # one <eos> per line
    assert [vocab[i] for i in splits["train"]] == text_file.tokenize_words(TRAIN)  # <unk> kept as given
    assert builder.info.metadata["source"] == SOURCE
    again = wikitext.WikiText(config="wikitext2", data_dir=str(tmp_path / "data"))  # reads the prepared data
    assert again.is_prepared() and again.info.metadata["vocab"] == VOCAB


@pytest.mark.parametrize("layout", ["folder", "zip"])
def test_official_layouts_read_the_same(tmp_path, layout):
    manual = tmp_path / "manual"
    if layout == "folder":
        _write(manual / "wikitext-2", FILES)
    else:
        _zip(manual / "wikitext-2-v1.zip", FILES, "wikitext-2")
    assert wikitext.describe_source(manual, "wikitext2") == SOURCE  # a zip by its members, unextracted
    builder = _prepare(tmp_path, manual)
    assert builder.info.metadata["vocab"] == VOCAB
    assert builder.info.metadata["source"] == SOURCE
    assert _splits(builder) == IDS


def test_each_config_finds_its_own_input_in_a_shared_manual_dir(tmp_path):
    manual = _write(tmp_path / "manual", {"wiki.train.tokens": "x\n", "wiki.valid.tokens": "x\n"})  # incomplete
    _write(manual / "wikitext-2", FILES)
    _zip(manual / "wikitext-103-v1.zip", {**FILES, "wiki.train.tokens": "a a b\n"}, "wikitext-103")
    assert wikitext.find_wikitext_input(manual, "wikitext2") == manual / "wikitext-2"
    assert wikitext.find_wikitext_input(manual, "wikitext103") == manual / "wikitext-103-v1.zip"
    assert wikitext.find_wikitext_input(tmp_path / "absent", "wikitext2") is None
    big = _prepare(tmp_path, manual, "wikitext103")
    assert big.info.metadata["vocab"] == ["a", "<eos>", "b", "<unk>"]


def test_load_corpus(tmp_path):
    manual = _write(tmp_path / "manual" / "wikitext-2", FILES)
    corpus = load_corpus("wikitext2", tmp_path / "data", manual)
    assert corpus.vocab == tuple(VOCAB) and corpus.vocab_size == 5 and corpus.symbols is None
    assert all(getattr(corpus, s).dtype == np.int32 for s in IDS)
    assert {s: getattr(corpus, s).tolist() for s in IDS} == IDS
    again = load_corpus("wikitext2", tmp_path / "data")  # prepared: reused, nothing downloaded
    assert again.test.tolist() == IDS["test"]
    other = _write(tmp_path / "other", {**FILES, "wiki.test.tokens": "cat\n"})
    with pytest.raises(ValueError, match="was prepared from .* now holds .*'bytes': 4"):
        load_corpus("wikitext2", tmp_path / "data", other)
    with pytest.raises(ValueError, match="vocab='corpus' is not accepted; accepted: None"):
        load_corpus("wikitext103", tmp_path / "data", manual, vocab="corpus")


def test_load_corpus_without_input_names_the_folder_and_url(tmp_path):
    manual = _write(tmp_path / "manual", {"notes.txt": "x"})
    url = wikitext.CONFIGS["wikitext103"].url
    with pytest.raises(FileNotFoundError, match=f"no WikiText-103 input in {manual}.*wiki.train.tokens.*{url}"):
        load_corpus("wikitext103", tmp_path / "data", manual)
    assert not (tmp_path / "data" / "wiki_text").exists()


def test_missing_split_names_the_folder_and_accepted_names(tmp_path):
    manual = _write(tmp_path / "manual" / "wikitext-2", {"wiki.train.tokens": TRAIN, "wiki.test.tokens": TEST})
    with pytest.raises(FileNotFoundError, match=f"{manual} has no valid.txt or wiki.valid.tokens for the 'valid'"):
        _prepare(tmp_path, tmp_path / "manual")
    with pytest.raises(FileNotFoundError, match="'valid' split"):
        wikitext.describe_source(tmp_path / "manual", "wikitext2")


@pytest.mark.parametrize(
    "data, message",
    [
        (" \n\t\n", "is an empty split: it holds no words"),
        (b"the\x00cat\n", "holds a NUL byte .at byte 3., so it is binary, not text; the word level needs UTF-8"),
        ("the cat\n".encode("utf-16"), "holds a NUL byte"),
        (b"caf\xe9\n", "is not UTF-8 .*the word level needs UTF-8 text"),
    ],
)
def test_not_text_is_refused_naming_the_file(tmp_path, data, message):
    manual = _write(tmp_path / "manual", {**FILES, "wiki.valid.tokens": data})
    with pytest.raises(ValueError, match=f"wikitext: {manual / 'wiki.valid.tokens'} {message}"):
        _prepare(tmp_path, manual)


def test_not_text_in_a_zip_names_the_member(tmp_path):
    manual = tmp_path / "manual"
    _zip(manual / "wikitext-2-v1.zip", {**FILES, "wiki.test.tokens": b"\x89PNG\x00"}, "wikitext-2")
    member = manual / "wikitext-2-v1.zip" / "wikitext-2" / "wiki.test.tokens"
    with pytest.raises(ValueError, match=f"wikitext: {member} holds a NUL byte"):
        _prepare(tmp_path, manual)


def test_input_file_errors(tmp_path):
    _write(tmp_path / "empty", {**FILES, "wiki.test.tokens": ""})
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty' / 'wiki.test.tokens'} is empty"):
        wikitext.describe_source(tmp_path / "empty", "wikitext2")
    _write(tmp_path / "both", {**FILES, "train.txt": TRAIN})
    with pytest.raises(ValueError, match=r"holds \['train.txt', 'wiki.train.tokens'\] .*keep one of them"):
        wikitext.describe_source(tmp_path / "both", "wikitext2")
    _write(tmp_path / "broken", {"wikitext-2-v1.zip": b"not a zip"})
    with pytest.raises(ValueError, match="wikitext-2-v1.zip is not a zip archive"):
        wikitext.describe_source(tmp_path / "broken", "wikitext2")
    with pytest.raises(ValueError, match=r"config='wikitext3' is not one of \('wikitext103', 'wikitext2'\)"):
        wikitext.describe_source(tmp_path / "both", "wikitext3")


@pytest.mark.parametrize("has_manual_dir", [False, True])
def test_failed_download_says_where_to_get_and_put_the_zip(tmp_path, has_manual_dir):
    manual = _write(tmp_path / "manual", {"notes.txt": "unrelated"}) if has_manual_dir else None
    cfg = wikitext.CONFIGS["wikitext103"]
    with pytest.raises(FileNotFoundError) as raised:
        _prepare(tmp_path, manual, "wikitext103")
    message = str(raised.value)
    assert "\n" not in message
    assert f"downloading {cfg.url} failed (ConnectionError: test: no network" in message
    assert "wikitext-103-v1.zip" in message and "wikitext-103/" in message and "manual dir" in message
    assert (str(manual) if has_manual_dir else "absent or empty") in message


def test_download_path_reads_the_zip_in_place(tmp_path, monkeypatch):
    downloaded = _zip(tmp_path / "downloads" / "wikitext-2-v1.zip", FILES, "wikitext-2")
    urls = []

    def fake_download(self, url):
        urls.append(url)
        return downloaded

    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    builder = _prepare(tmp_path, None)
    assert urls == [wikitext.CONFIGS["wikitext2"].url]
    assert builder.info.metadata["source"] == SOURCE
    assert _splits(builder) == IDS
