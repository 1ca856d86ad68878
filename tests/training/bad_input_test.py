"""Bad inputs to a run fail in ``loop.prepare`` with one clear error, before anything is written.

Data too small for the batches (language modeling and GLUE), a rank the model cannot use, a non-finite
learning rate: each raises a ValueError naming what is wrong, and the workdir does not exist after.
"""

import numpy as np
import pytest
from tiny_runs import tiny_glue_config, tiny_lm_config, write_tiny_glue

from flaxprune.data.batching import StreamBatcher
from flaxprune.data.corpus import Corpus
from flaxprune.training import loop
from flaxprune.training.lm_task import check_corpus_fits

# tiny_lm_config reads batches of 4 x 16 tokens for training and 2 streams of 16 for evaluation.
TRAIN_NEEDS, EVAL_NEEDS = 4 * 16 + 1, 2 * 16 + 1


def _refused(config, workdir, match, error=ValueError):
    with pytest.raises(error, match=match):
        loop.prepare(config, workdir)
    assert not workdir.exists()
    with pytest.raises(error, match=match):  # train() checks the same, before its run directory
        loop.train(config, workdir, log=lambda _: None, progress=False)
    assert not workdir.exists()


def _text_config(tmp_path, **files):
    """``tiny_lm_config`` on byte-level text files ``{name: text}`` written to a fresh manual dir."""
    manual = tmp_path / "text"
    manual.mkdir()
    for name, text in files.items():
        (manual / name).write_text(text)
    return tiny_lm_config(
        **{"data.name": "text_char", "data.manual_dir": str(manual), "data.data_dir": str(tmp_path / "tfds")},
        **{"data.max_bytes": None},
    )


def test_a_100_byte_text_file_is_refused_for_its_5_byte_valid_split(tmp_path):
    config = _text_config(tmp_path, **{"text.txt": "x" * 100})  # 90 / 5 / 5 bytes
    _refused(
        config,
        tmp_path / "run",
        rf"the valid split has 5 tokens, too few for an evaluation: config.train.eval_batch_size=2 streams of "
        rf"config.train.seq_len=16 tokens, each with its next token, need at least 2 x 16 \+ 1 = {EVAL_NEEDS}\.",
    )


@pytest.mark.parametrize(
    "sizes,split,needs",
    [
        ((TRAIN_NEEDS - 1, EVAL_NEEDS, EVAL_NEEDS), "train", rf"batch_size=4 .* 4 x 16 \+ 1 = {TRAIN_NEEDS}"),
        ((TRAIN_NEEDS, EVAL_NEEDS - 1, EVAL_NEEDS), "valid", rf"eval_batch_size=2 .* 2 x 16 \+ 1 = {EVAL_NEEDS}"),
        ((TRAIN_NEEDS, EVAL_NEEDS, EVAL_NEEDS - 1), "test", rf"eval_batch_size=2 .* 2 x 16 \+ 1 = {EVAL_NEEDS}"),
    ],
)
def test_a_split_one_token_short_is_refused_before_the_run_directory(sizes, split, needs, tmp_path):
    names = ("train.txt", "valid.txt", "test.txt")
    config = _text_config(tmp_path, **{name: "x" * size for name, size in zip(names, sizes)})
    n = dict(zip(("train", "valid", "test"), sizes))[split]
    _refused(config, tmp_path / "run", rf"the {split} split has {n} tokens, too few .*{needs}")


def test_the_check_matches_the_batchers_arithmetic():
    """Exactly enough passes check_corpus_fits and makes a batch; one token fewer fails both."""
    config = tiny_lm_config()
    ok = np.zeros(TRAIN_NEEDS, np.int32)
    check_corpus_fits(Corpus(ok, ok[:EVAL_NEEDS], ok[:EVAL_NEEDS], 256), config.train)
    assert len(StreamBatcher(ok, 4, 16)) == 1
    with pytest.raises(ValueError, match="too few for a training batch"):
        check_corpus_fits(Corpus(ok[:-1], ok[:EVAL_NEEDS], ok[:EVAL_NEEDS], 256), config.train)
    with pytest.raises(ValueError, match="need at least 65 for one segment"):
        StreamBatcher(ok[:-1], 4, 16)
    with pytest.raises(ValueError, match="the valid split has 0 tokens"):  # a corpus with no valid file
        check_corpus_fits(Corpus(ok, ok[:0], ok[:EVAL_NEEDS], 256), config.train)


def test_a_token_id_outside_the_vocabulary_is_refused():
    config = tiny_lm_config()
    ok = np.zeros(TRAIN_NEEDS, np.int32)
    bad = ok.copy()
    bad[7] = 256
    with pytest.raises(ValueError, match=r"the valid split holds token id 256, outside the vocabulary \[0, 256\)"):
        check_corpus_fits(Corpus(ok, bad[:EVAL_NEEDS], ok[:EVAL_NEEDS], 256), config.train)
    bad[7] = -1
    with pytest.raises(ValueError, match="the train split holds token id -1"):
        check_corpus_fits(Corpus(bad, ok[:EVAL_NEEDS], ok[:EVAL_NEEDS], 256), config.train)


def test_a_rank_above_the_model_width_is_refused(tmp_path):
    config = tiny_lm_config(**{"data.data_dir": str(tmp_path / "tfds"), "model.d_model": 32, "model.rank": 1000})
    _refused(config, tmp_path / "run", r"SRUConfig: rank=1000 must be None .* integer in \[1, 32\]")


def test_a_non_finite_learning_rate_is_refused(tmp_path):
    config = tiny_lm_config(**{"optim.learning_rate": float("inf")})
    _refused(config, tmp_path / "run", r"config.optim.learning_rate=inf must be a finite number > 0")


# --- GLUE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case,match",
    [
        ("empty_train", r"SST-2/train.tsv holds no examples \(only a header\); the train split needs at least one"),
        ("empty_dev", r"SST-2/dev.tsv holds no examples \(only a header\); the dev split needs at least one"),
        ("subset", r"the train split has 3 examples \(config.data.train_subset=3 keeps them\), too few for one "
                   r"batch of config.train.batch_size=4; use more examples or a batch_size <= 3"),
        ("batch", r"the train split has 24 examples, too few for one batch of config.train.batch_size=32"),
    ],
)
def test_glue_splits_too_small_are_refused(case, match, tmp_path):
    root, folder = write_tiny_glue(tmp_path)
    sst = root / "glue" / "SST-2"
    config = tiny_glue_config(root, folder)
    if case == "empty_train":
        (sst / "train.tsv").write_text("sentence\tlabel\n")
    elif case == "empty_dev":
        (sst / "dev.tsv").write_text("sentence\tlabel\n")
    elif case == "subset":
        config.data.train_subset = 3
    else:
        config.train.update(batch_size=32, eval_batch_size=32, speed_batch_size=32)
    with pytest.raises(ValueError, match=match):
        loop.prepare(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
