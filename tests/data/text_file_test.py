"""TextFile builder, char and word level, on tiny files."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from flaxprune.data import text_file
from flaxprune.data.corpus import read_stream

TRAIN = "the cat\nthe dog\n"
VALID = "the bird\n"
TEST = "\ncat fish"
# Train counts: the 2, <eos> 2, cat 1, dog 1; <unk> is absent, so added with count 0.
VOCAB = ["<eos>", "the", "cat", "dog", "<unk>"]


def _write(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return directory


def _prepare(tmp_path, level, files):
    manual = _write(tmp_path / "manual", files)
    builder = text_file.TextFile(config=level, data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder


def _splits(builder):
    return {s: read_stream(builder, s) for s in builder.info.splits}


def test_tokenize_words_wikitext_style():
    assert text_file.tokenize_words(" a b \n\n c\n") == ["a", "b", "<eos>", "<eos>", "c", "<eos>"]
    assert text_file.tokenize_words("a\r\nb\rc") == ["a", "<eos>", "b", "<eos>", "c", "<eos>"]
    assert text_file.tokenize_words("") == []
    assert text_file.tokenize_words("\n") == ["<eos>"]


def test_build_vocab_by_frequency_then_token():
    assert text_file.build_vocab(["b", "a", "c", "a", "b", "<unk>", "<unk>", "<unk>"]) == ["<unk>", "a", "b", "c"]
    assert text_file.build_vocab(text_file.tokenize_words(TRAIN)) == VOCAB


@pytest.mark.parametrize(
    "names",
    [("train.txt", "valid.txt", "test.txt"), ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")],
)
def test_word_level_vocab_from_train_unk_and_eos(tmp_path, monkeypatch, names):
    monkeypatch.setattr(text_file, "CHUNK_SIZE", 2)  # several chunks per split
    builder = _prepare(tmp_path, "word", dict(zip(names, (TRAIN, VALID, TEST))))
    vocab = builder.info.metadata["vocab"]
    assert vocab == VOCAB
    splits = _splits(builder)
    assert all(a.dtype == np.int32 for a in splits.values())
    np.testing.assert_array_equal(splits["train"], [1, 2, 0, 1, 3, 0])
    np.testing.assert_array_equal(splits["valid"], [1, 4, 0])  # 'bird' is not in train
    np.testing.assert_array_equal(splits["test"], [0, 2, 4, 0])  # nor is 'fish'
    assert [vocab[i] for i in splits["train"]] == text_file.tokenize_words(TRAIN)
    # The vocabulary is saved with the data: a fresh builder reads the same one.
    again = text_file.TextFile(config="word", data_dir=str(tmp_path / "data"))
    assert again.info.metadata["vocab"] == VOCAB
    assert again.info.metadata["source"]["train"] == {"file": names[0], "bytes": len(TRAIN)}


def test_char_level_is_bytes(tmp_path):
    files = {"train.txt": "héllo\n", "valid.txt": "ab", "test.txt": b"\xff\x00"}  # bytes need not be UTF-8
    splits = _splits(_prepare(tmp_path, "char", files))
    assert splits["train"].dtype == np.uint8
    assert splits["train"].tobytes() == "héllo\n".encode()
    assert splits["valid"].tobytes() == b"ab"
    assert splits["test"].tobytes() == b"\xff\x00"


def test_present_splits_only(tmp_path):
    builder = _prepare(tmp_path, "char", {"train.txt": "abc", "test.txt": "d"})
    assert set(builder.info.splits) == {"train", "test"}


def test_single_file_char_90_5_5(tmp_path):
    data = bytes(range(256)) * 4  # 1024 bytes: 51 valid, 51 test
    splits = _splits(_prepare(tmp_path, "char", {"text.txt": data}))
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [922, 51, 51]
    assert np.concatenate([splits[s] for s in ("train", "valid", "test")]).tobytes() == data


def test_single_file_word_90_5_5_vocab_from_train_part(tmp_path):
    text = "a b\n" * 30 + "z\n" * 5  # 90 + 10 tokens: the z's fall in valid / test
    builder = _prepare(tmp_path, "word", {"text.txt": text})
    vocab = builder.info.metadata["vocab"]
    assert "z" not in vocab and vocab[-1] == "<unk>"
    splits = _splits(builder)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [90, 5, 5]
    tokens = text_file.tokenize_words(text)
    decoded = [vocab[i] for s in ("train", "valid", "test") for i in splits[s]]
    assert decoded == [t if t in vocab else "<unk>" for t in tokens]


def test_find_text_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no input file in {tmp_path}.*train.txt.*wiki.train.tokens.*text.txt"):
        text_file.find_text_files(tmp_path)
    _write(tmp_path / "both", {"train.txt": "a", "wiki.train.tokens": "a"})
    with pytest.raises(ValueError, match="keep one of them"):
        text_file.find_text_files(tmp_path / "both")
    _write(tmp_path / "mixed", {"train.txt": "a", "text.txt": "a"})
    with pytest.raises(ValueError, match="both text.txt and per-split files"):
        text_file.find_text_files(tmp_path / "mixed")
    _write(tmp_path / "empty", {"train.txt": "a", "valid.txt": ""})
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty' / 'valid.txt'} is empty"):
        text_file.find_text_files(tmp_path / "empty")


def test_word_level_needs_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary from the train split"):
        _prepare(tmp_path, "word", {"valid.txt": VALID})


def test_word_level_needs_utf8(tmp_path):
    with pytest.raises(ValueError, match="train.txt is not UTF-8"):
        _prepare(tmp_path, "word", {"train.txt": b"\xff\xfe"})


@pytest.mark.parametrize("data, at", [(b"the\x00cat\n", 3), ("the cat\n".encode("utf-16-le"), 1)])
def test_word_level_refuses_nul_bytes(tmp_path, data, at):
    with pytest.raises(ValueError, match=rf"text_file: .*valid.txt holds a NUL byte .at byte {at}., so it is binary"):
        _prepare(tmp_path, "word", {"train.txt": TRAIN, "valid.txt": data})


@pytest.mark.parametrize("name", ["test.txt", "text.txt"])
def test_word_level_refuses_an_empty_split(tmp_path, name):
    files = {"train.txt": TRAIN, "test.txt": " \n\n"} if name == "test.txt" else {"text.txt": "\t\n \n"}
    with pytest.raises(ValueError, match=f"{tmp_path / 'manual' / name} is an empty split: it holds no words"):
        _prepare(tmp_path, "word", files)


def test_word_streams_is_tokenize_build_vocab_and_lookup(tmp_path):
    rng = np.random.default_rng(0)
    words = np.array(["a", "b", "c", "d", "<unk>", "é", "x y"])
    texts = {
        split: "".join(
            " ".join(rng.choice(words, size=rng.integers(0, 6))) + rng.choice(["\n", "\r\n", "\r"]) for _ in range(n)
        )
        for split, n in (("train", 60), ("valid", 20), ("test", 20))
    }
    texts["valid"] += "unseen words\n"
    files = {s: _write(tmp_path, {f"{s}.txt": t}) / f"{s}.txt" for s, t in texts.items()}
    vocab, ids = text_file.word_streams(files)
    tokens = {s: text_file.tokenize_words(t) for s, t in texts.items()}
    assert vocab == text_file.build_vocab(tokens["train"])
    for split, expected in tokens.items():
        assert ids[split].dtype == np.int32
        assert [vocab[i] for i in ids[split]] == [t if t in vocab else "<unk>" for t in expected]


def test_missing_manual_dir(tmp_path):
    builder = text_file.TextFile(config="char", data_dir=str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "absent")))
