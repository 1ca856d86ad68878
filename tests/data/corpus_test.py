"""load_corpus for every name on tiny inputs; errors come before any preparation."""

import numpy as np
import pytest

from flaxprune.data import CORPUS_NAMES, Corpus, load_corpus
from flaxprune.data.stdlib_corpus import split_bytes, stdlib_text


def _write(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def _assert_int32(corpus):
    assert all(a.dtype == np.int32 and a.ndim == 1 for a in (corpus.train, corpus.valid, corpus.test))


def test_unknown_name_lists_the_accepted_ones(tmp_path):
    with pytest.raises(
        ValueError,
        match="name='wikitext' is not one of .*'enwik8', 'text_char', 'text_word', 'wikitext103', 'wikitext2'",
    ):
        load_corpus("wikitext", tmp_path)
    assert CORPUS_NAMES == ("enwik8", "text_char", "text_word", "wikitext103", "wikitext2", "stdlib")


def test_enwik8(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=4000, dtype=np.uint8).tobytes()
    manual = _write(tmp_path / "manual", {"enwik5": data})
    corpus = load_corpus("enwik8", tmp_path / "data", manual)
    assert isinstance(corpus, Corpus)
    _assert_int32(corpus)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (3600, 200, 200)
    assert np.concatenate([corpus.train, corpus.valid, corpus.test]).astype(np.uint8).tobytes() == data
    assert corpus.vocab_size == 256 and corpus.vocab is None
    # Prepared once; reused without the manual dir (no download attempted).
    again = load_corpus("enwik8", tmp_path / "data")
    np.testing.assert_array_equal(again.test, corpus.test)


def test_enwik8_missing_or_empty_file_fails_before_preparing(tmp_path):
    manual = _write(tmp_path / "manual", {"notes.txt": b"x"})
    with pytest.raises(FileNotFoundError, match=f"manual_dir='{manual}'.*'enwik8', 'enwik8.zip'"):
        load_corpus("enwik8", tmp_path / "data", manual)
    _write(manual, {"enwik8": b""})
    with pytest.raises(ValueError, match=f"{manual / 'enwik8'} is empty"):
        load_corpus("enwik8", tmp_path / "data", manual)
    assert not (tmp_path / "data" / "enwik8").exists()


def test_a_different_input_is_not_served_stale_data(tmp_path):
    load_corpus("enwik8", tmp_path / "data", _write(tmp_path / "a", {"enwik8": b"x" * 100}))
    with pytest.raises(ValueError, match="was prepared from .*'bytes': 100.* now holds .*'bytes': 200"):
        load_corpus("enwik8", tmp_path / "data", _write(tmp_path / "b", {"enwik8": b"x" * 200}))


def test_text_char(tmp_path):
    manual = _write(tmp_path / "manual", {"train.txt": b"hello\n", "test.txt": b"hi"})
    corpus = load_corpus("text_char", tmp_path / "data", manual)
    _assert_int32(corpus)
    assert corpus.train.astype(np.uint8).tobytes() == b"hello\n"
    assert corpus.valid.shape == (0,)  # no valid.txt
    assert corpus.test.tolist() == list(b"hi")
    assert corpus.vocab_size == 256 and corpus.vocab is None


def test_text_word(tmp_path):
    manual = _write(
        tmp_path / "manual",
        {"wiki.train.tokens": b" = Title = \n\n a b a \n", "wiki.valid.tokens": b" a c \n", "wiki.test.tokens": b"b\n"},
    )
    corpus = load_corpus("text_word", tmp_path / "data", manual)
    _assert_int32(corpus)
    # Train counts: <eos> 3, = 2, a 2, Title 1, b 1, <unk> 0.
    assert corpus.vocab == ("<eos>", "=", "a", "Title", "b", "<unk>")
    assert corpus.vocab_size == 6
    assert [corpus.vocab[i] for i in corpus.train] == ["=", "Title", "=", "<eos>", "<eos>", "a", "b", "a", "<eos>"]
    assert [corpus.vocab[i] for i in corpus.valid] == ["a", "<unk>", "<eos>"]
    assert [corpus.vocab[i] for i in corpus.test] == ["b", "<eos>"]


def test_text_default_manual_dir_and_errors(tmp_path):
    data_dir = tmp_path / "data"
    with pytest.raises(FileNotFoundError, match=str(data_dir / "downloads" / "manual")):
        load_corpus("text_word", data_dir)
    _write(data_dir / "downloads" / "manual", {"text.txt": b"a b c\n" * 10})
    corpus = load_corpus("text_word", data_dir)
    assert len(corpus.train) + len(corpus.valid) + len(corpus.test) == 40
    _write(tmp_path / "empty", {"train.txt": b""})
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty' / 'train.txt'} is empty"):
        load_corpus("text_char", tmp_path / "data2", tmp_path / "empty")


def test_stdlib(tmp_path):
    corpus = load_corpus("stdlib", tmp_path, max_bytes=20_000)
    _assert_int32(corpus)
    expected = split_bytes(stdlib_text(20_000))
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(corpus, split), expected[split])
    assert corpus.vocab_size == 256 and corpus.vocab is None


def test_options_that_do_not_apply(tmp_path):
    with pytest.raises(ValueError, match="manual_dir=.* must be None"):
        load_corpus("stdlib", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="max_bytes=5 only applies to 'stdlib'"):
        load_corpus("enwik8", tmp_path, tmp_path, max_bytes=5)


def test_corpus_vocab_is_the_training_symbols_in_byte_order_plus_one_unseen_id(tmp_path):
    manual = _write(tmp_path / "manual", {"train.txt": b"banana\n", "valid.txt": b"nab", "test.txt": b"cab!"})
    corpus = load_corpus("text_char", tmp_path / "data", manual, vocab="corpus")
    _assert_int32(corpus)
    assert corpus.symbols == (ord("\n"), ord("a"), ord("b"), ord("n"))  # byte order: 10, 97, 98, 110
    assert corpus.vocab_size == 5  # and id 4 for bytes train never shows
    assert corpus.train.tolist() == [2, 1, 3, 1, 3, 1, 0]
    assert corpus.valid.tolist() == [3, 1, 2]
    assert corpus.test.tolist() == [4, 1, 2, 4]  # 'c' and '!' are not in train
    same = load_corpus("text_char", tmp_path / "data", manual, vocab="bytes")  # the same prepared data, 256 ids
    assert same.vocab_size == 256 and same.symbols is None and same.test.tolist() == list(b"cab!")


def test_corpus_vocab_errors_name_the_value(tmp_path):
    manual = _write(tmp_path / "manual", {"train.txt": b"a b\n"})
    with pytest.raises(ValueError, match=r"vocab='chars' is not accepted; accepted: \('bytes', 'corpus'\)"):
        load_corpus("text_char", tmp_path / "data", manual, vocab="chars")
    for name in ("text_word", "wikitext103", "wikitext2"):  # checked before any input is looked at
        with pytest.raises(ValueError, match="vocab='corpus' is not accepted; accepted: None"):
            load_corpus(name, tmp_path / "data", manual, vocab="corpus")
