"""BERT's WordPiece tokenizer from a checkpoint's ``vocab.txt``.

FLOP (Wang, Wohlwend & Lei, EMNLP 2020, Section 4.2) fine-tunes and prunes
BERT on GLUE, whose inputs are one sentence or a pair. BERT reads them as
``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``, token types 0 for ``[CLS] A
[SEP]`` and 1 for ``B [SEP]`` (Devlin et al., 2019, Section 3). This wraps the
``tokenizers`` library's ``BertWordPieceTokenizer`` (BERT's normalizer,
pre-tokenizer and WordPiece model) and adds that template with BERT's own
truncation (``truncated_pair_lengths``) and right padding to a fixed length,
returning NumPy arrays ready for a jitted model.

Lower-casing follows the checkpoint: ``do_lower_case`` from the
``tokenizer_config.json`` beside ``vocab.txt`` when there is one, else True
(an uncased model; the common case). As in BERT's ``BasicTokenizer``,
lower-casing also strips accents.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from tokenizers import BertWordPieceTokenizer

__all__ = ["SPECIAL_TOKENS", "WordPieceTokenizer", "read_do_lower_case", "truncated_pair_lengths"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # the vocab must hold these; [MASK] is optional


def read_do_lower_case(directory: str | os.PathLike, default: bool = True) -> bool:
    """``do_lower_case`` from ``directory/tokenizer_config.json``; ``default`` when absent.

    Raises:
      ValueError: if the file is not JSON or its ``do_lower_case`` is not a bool.
    """
    path = os.path.join(os.fspath(directory), "tokenizer_config.json")
    if not os.path.isfile(path):
        return default
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer: {path} is not valid JSON ({e}).") from e
    value = config.get("do_lower_case", default) if isinstance(config, dict) else default
    if not isinstance(value, bool):
        raise ValueError(f"tokenizer: {path} has do_lower_case={value!r}; expected true or false.")
    return value


def truncated_pair_lengths(len1: int, len2: int, budget: int) -> tuple[int, int]:
    """How many tokens of A and B BERT keeps when they must fit ``budget`` tokens.

    The closed form of BERT's ``_truncate_seq_pair``: while too long, drop the
    last token of the longer sequence, of B on a tie. So a short sequence is
    kept whole, and two long ones share the budget, A getting the odd token.
    """
    if len1 + len2 <= budget:
        return len1, len2
    keep1 = min(len1, max((budget + 1) // 2, budget - len2))
    return keep1, budget - keep1


class WordPieceTokenizer:
    """BERT inputs from sentences: ``encode_batch`` -> fixed-length int32 arrays.

    Attributes:
      lowercase: whether text is lower-cased (and accents stripped).
      vocab_size: the number of WordPiece ids.
      pad_id, unk_id, cls_id, sep_id: the special tokens' ids.
    """

    def __init__(self, vocab_file: str | os.PathLike, *, lowercase: bool | None = None):
        """Reads the vocabulary.

        Args:
          vocab_file: a BERT ``vocab.txt`` (one token per line, id = line
            number), or the checkpoint folder holding it.
          lowercase: lower-case the text; None reads ``do_lower_case`` from
            ``tokenizer_config.json`` beside the vocab (True when absent).

        Raises:
          FileNotFoundError: if there is no vocab file.
          ValueError: if the vocab lacks one of ``SPECIAL_TOKENS``.
        """
        path = os.fspath(vocab_file)
        if os.path.isdir(path):
            path = os.path.join(path, "vocab.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer: no vocab file at {path} (expected a BERT vocab.txt).")
        with open(path, encoding="utf-8") as f:
            # BERT's load_vocab: one token per line, trailing newline stripped, id = line number.
            lines = [line.rstrip("\n") for line in f]
        vocab = {token: i for i, token in enumerate(lines)}
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer: {path} lacks the special tokens {missing}; BERT needs {SPECIAL_TOKENS}.")
        if lowercase is None:
            lowercase = read_do_lower_case(os.path.dirname(path))
        self.lowercase = bool(lowercase)
        self.vocab_size = len(lines)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in SPECIAL_TOKENS)
        # strip_accents=None follows lowercase, as BERT's BasicTokenizer does.
        self._tokenizer = BertWordPieceTokenizer(vocab, lowercase=self.lowercase, strip_accents=None)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text``, without special tokens."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(int(token_id))

    def encode_batch(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str] | None = None,
        max_length: int = 128,
    ) -> dict[str, np.ndarray]:
        """Encodes single sentences or pairs as fixed-length BERT inputs.

        Sequences longer than ``max_length`` are truncated: a single sentence
        from its end; a pair longest-first (one token at a time from whichever
        side is longer, as BERT's ``_truncate_seq_pair``). Shorter ones are
        padded on the right with ``[PAD]``.

        Args:
          sentences1: ``N`` first sentences.
          sentences2: ``N`` second sentences, or None for single sentences.
          max_length: tokens per row including ``[CLS]`` / ``[SEP]``: at least
            2 for single sentences, 3 for pairs.

        Returns:
          ``{'input_ids', 'token_type_ids', 'attention_mask'}``, each int32
          ``[N, max_length]``; ``attention_mask`` is 1 on real tokens, 0 on
          padding, and ``token_type_ids`` is 1 on ``B [SEP]``.

        Raises:
          ValueError: for a ``max_length`` too small for the special tokens,
            unequal ``sentences1`` / ``sentences2`` lengths, or a non-string
            sentence.
        """
        pair = sentences2 is not None
        need = 3 if pair else 2
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < need:
            kind = "pairs ([CLS] A [SEP] B [SEP])" if pair else "single sentences ([CLS] A [SEP])"
            raise ValueError(f"encode_batch: max_length={max_length!r} must be an integer >= {need} for {kind}.")
        if isinstance(sentences1, str) or (pair and isinstance(sentences2, str)):
            raise ValueError("encode_batch: sentences1 / sentences2 must be sequences of strings, not one string.")
        sentences1 = list(sentences1)
        if pair:
            sentences2 = list(sentences2)
            if len(sentences2) != len(sentences1):
                raise ValueError(
                    f"encode_batch: {len(sentences1)} sentences1 but {len(sentences2)} sentences2; they pair up."
                )
        bad = [s for s in sentences1 + (sentences2 or []) if not isinstance(s, str)]
        if bad:
            bad = bad[0]
            raise ValueError(f"encode_batch: every sentence must be a str, got {type(bad).__name__} {bad!r}.")
        if not sentences1:  # the library refuses an empty batch
            return {k: np.zeros((0, max_length), np.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
        # Special tokens and truncation are done here, not by the library: its
        # longest-first gives a tied odd token to B, BERT's _truncate_seq_pair to A.
        ids1 = [e.ids for e in self._tokenizer.encode_batch(sentences1, add_special_tokens=False)]
        ids2 = [e.ids for e in self._tokenizer.encode_batch(sentences2, add_special_tokens=False)] if pair else None
        n = len(ids1)
        input_ids = np.full((n, max_length), self.pad_id, np.int32)  # [N, max_length]
        token_type_ids = np.zeros((n, max_length), np.int32)  # [N, max_length]
        attention_mask = np.zeros((n, max_length), np.int32)  # [N, max_length]
        for i in range(n):
            if pair:
                len1, len2 = truncated_pair_lengths(len(ids1[i]), len(ids2[i]), max_length - 3)
                first = [self.cls_id, *ids1[i][:len1], self.sep_id]
                row = first + [*ids2[i][:len2], self.sep_id]
                token_type_ids[i, len(first) : len(row)] = 1
            else:
                row = [self.cls_id, *ids1[i][: max_length - 2], self.sep_id]
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
