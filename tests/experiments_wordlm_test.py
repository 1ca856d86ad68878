"""The word-level LM experiment (``experiments/wordlm.py``), its configs and the adaptive softmax benchmark."""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.models import build_model
from flaxprune.training.config import load_config_file, validate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _experiments():
    path = str(ROOT / "experiments")
    if path not in sys.path:
        sys.path.insert(0, path)


def _write_corpus(folder: pathlib.Path, names=("wiki.valid.tokens", "wiki.test.tokens"), lines=(300, 80)):
    """Zipf-distributed words of a 200-word vocabulary, about 10 per line."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, 201)
    for name, n in zip(names, lines):
        rows = [" ".join(f"w{i}" for i in rng.choice(200, rng.integers(3, 15), p=p / p.sum())) for _ in range(n)]
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("name, vocab, low, high", [("sru_wt2_small", 33_278, 2e6, 6e6),
                                                    ("sru_wt103", 267_735, 1.2e8, 2e8)])
def test_word_configs_validate_and_build_abstractly(name, vocab, low, high):
    c = load_config_file(ROOT / "experiments" / "configs" / f"{name}.py")
    validate(c)
    fields = dict(c.model)
    model, config = build_model(fields.pop("name"), **fields, vocab_size=vocab)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 4), np.int32),
                                               model.initial_carry(1))["params"])
    assert low < fp.total_params(shapes) < high
    assert config.tie_weights and config.prune_embeddings


def test_wordlm_trains_dense_and_flop_and_writes_the_tables(tmp_path):
    """No train file: the valid file is split 90/10 (train / valid), the test file tests; a rerun reuses."""
    _experiments()
    import wordlm

    data = _write_corpus(tmp_path / "corpus")
    results = tmp_path / "results"
    args = [f"--data={data}", f"--workdir={tmp_path / 'runs'}", "--steps=12", "--tiny", f"--results={results}"]
    assert wordlm.main(args) == 0
    (rows,) = json.loads((results / "wordlm_corpus.json").read_text())["rows"]
    assert "first 90% of the lines of wiki.valid.tokens" in rows["setting"]["splits"]
    assert rows["setting"]["vocab_size"] <= 202 and len(rows["bands"]) == len(rows["setting"]["cutoffs"]) + 1
    gated, reduced = rows["flop_gated"], rows["flop_reduced"]
    assert np.isclose(gated["test_ppl"], reduced["test_ppl"], rtol=1e-4)  # shrink keeps the perplexity
    assert rows["dense"]["test_ppl"] > 1 and reduced["embedding_params"] <= gated["embedding_params"]
    assert sum(b["train_token_share"] for b in rows["bands"]) == pytest.approx(1.0)
    assert all(0 <= b["kept"] <= b["dims"] for b in rows["bands"])
    table = (results / "wordlm_corpus.md").read_text()
    assert "| FLOP, reduced (after shrink) |" in table and "share of train tokens" in table
    stamp = (tmp_path / "runs" / "dense" / "summary.json").stat().st_mtime_ns
    assert wordlm.main(args) == 0  # finished runs are reused
    assert (tmp_path / "runs" / "dense" / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("flag, message", [
    ("--data={tmp}/missing", "--data="), ("--target=1.5", "--target=1.5"), ("--steps=3", "--steps=3"),
    ("--cutoffs=ten", "--cutoffs='ten'"),
])
def test_wordlm_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys, flag, message):
    _experiments()
    import wordlm

    data = _write_corpus(tmp_path / "corpus")
    assert wordlm.main([f"--data={data}", f"--workdir={tmp_path / 'runs'}", flag.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wordlm.py: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_wordlm_refuses_a_folder_without_train_or_valid_and_cutoffs_beyond_the_vocabulary(tmp_path, capsys):
    _experiments()
    import wordlm

    only_test = _write_corpus(tmp_path / "only_test", names=("wiki.test.tokens",), lines=(50,))
    assert wordlm.main([f"--data={only_test}", f"--workdir={tmp_path / 'a'}"]) == 2
    assert "no train file" in capsys.readouterr().err and not (tmp_path / "a").exists()
    data = _write_corpus(tmp_path / "corpus")
    assert wordlm.main([f"--data={data}", f"--workdir={tmp_path / 'b'}", "--cutoffs=50,5000", "--tiny"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after tfds' progress bars
    assert last.startswith("wordlm.py: ") and "cutoffs=(50, 5000) must be strictly increasing" in last, last
    assert not (tmp_path / "b" / "dense").exists()  # no run started


def test_adaptive_softmax_bench_times_all_three_variants(tmp_path):
    _experiments()
    import adaptive_softmax_bench

    assert adaptive_softmax_bench.main(["--vocab=3000", "--repeats=1", "--d-model=16", f"--results={tmp_path}"]) == 0
    (path,) = tmp_path.glob("adaptive_softmax_*.json")
    rows = json.loads(path.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["full", "adaptive_all", "adaptive"]
    assert all(r["tokens_per_s"] > 0 and r["temp_mb"] > 0 for r in rows)
    assert rows[2]["theoretical_speedup"] > rows[1]["theoretical_speedup"]  # the tails only where targets fall
    assert adaptive_softmax_bench.main(["--vocab=abc"]) == 2


def test_flaxprune_report_of_the_paper_config_builds_nothing_and_prints_its_size(capsys):
    from flaxprune import cli

    assert cli.main(["report", f"--config={ROOT / 'experiments' / 'configs' / 'sru_wt103.py'}"]) == 0
    out = capsys.readouterr().out
    assert "vocab_size 267,735" in out and "total params: 149,759,580" in out
    assert out.count("adaptive[") == 6 and out.count("factorized") == 12
    assert cli.main(["report"]) == 2  # neither --checkpoint nor --config
    assert "give one of --checkpoint=DIR or --config=FILE" in capsys.readouterr().err
