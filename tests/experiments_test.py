"""Every experiment config validates and builds; the CLI runs a few steps end to end."""

import argparse
import json
import pathlib

import jax
import numpy as np
import pytest

import flaxprune as fp
from flaxprune import cli
from flaxprune.models import build_model
from flaxprune.training.config import load_config_file, validate

from tiny_runs import MAX_POS, write_tiny_glue

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


def load(name):
    return load_config_file(CONFIGS / f"{name}.py")


@pytest.mark.parametrize(
    "name,min_params,max_params",
    [
        ("sru_small", 2e5, 2e6),
        ("txl_small", 1e5, 2e6),
        ("sru_enwik8", 3e7, 6e7),  # FLOP's enwik8 SRU: ~37M before pruning
        ("txl_enwik8", 3e7, 6e7),  # Transformer-XL base on enwik8: ~41M
    ],
)
def test_config_validates_and_builds_abstractly(name, min_params, max_params):
    c = load(name)
    validate(c)
    fields = dict(c.model)
    model, _ = build_model(fields.pop("name"), **fields, vocab_size=256)
    tokens = np.zeros((1, c.train.seq_len), np.int32)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), tokens, model.initial_carry(1), deterministic=True)["params"]
    )
    n = fp.total_params(shapes)
    assert min_params < n < max_params, n
    assert fp.prunable_params(shapes) > 0


TINY_TXL = [
    "--config.model.n_layers=1",
    "--config.model.d_model=16",
    "--config.model.d_head=8",
    "--config.model.n_heads=2",
    "--config.model.d_inner=32",
    "--config.model.mem_len=8",
    "--config.data.max_bytes=20000",
    "--config.train.batch_size=4",
    "--config.train.seq_len=8",
    "--config.train.steps=4",
    "--config.train.eval_every=4",
    "--config.train.log_every=2",
    "--config.train.eval_batch_size=2",
]


@pytest.mark.e2e
def test_cli_train_report_eval_shrink(tmp_path, capsys):
    workdir = tmp_path / "run"
    common = [f"--config.data.data_dir={tmp_path / 'tfds'}"]
    argv = ["train", f"--config={CONFIGS / 'txl_small.py'}", f"--workdir={workdir}", *TINY_TXL, *common]
    assert cli.main(argv) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["reduced_params"] <= summary["params"]
    assert cli.main(["report", f"--checkpoint={workdir}"]) == 0
    assert "layers_0/attn/qkv" in capsys.readouterr().out
    assert cli.main(["eval", f"--workdir={workdir}", "--split=test", "--reduced"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("test_bpc:")[1]) == pytest.approx(summary["reduced_test_bpc"], abs=1e-4)
    assert cli.main(["shrink", f"--workdir={workdir}", f"--output={tmp_path / 'small'}"]) == 0
    assert cli.main(["report", f"--checkpoint={tmp_path / 'small'}"]) == 0


def test_cli_rejects_unknown_keys_and_missing_flags(tmp_path, capsys):
    argv = ["train", f"--config={CONFIGS / 'sru_small.py'}", f"--workdir={tmp_path}", "--config.train.nonexistent=3"]
    assert cli.main(argv) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert cli.main(["train", f"--config={CONFIGS / 'sru_small.py'}"]) == 2
    assert "--workdir" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2


def _import_from(*subdirs):
    """Puts the repository's ``subdirs`` on ``sys.path`` (once each) so their scripts import as modules."""
    import sys

    for sub in subdirs:
        path = str(pathlib.Path(__file__).resolve().parents[1] / sub)
        if path not in sys.path:
            sys.path.insert(0, path)


@pytest.mark.e2e
def test_glue_script_runs_both_models_and_writes_the_table(tmp_path):
    """``experiments/glue_minilm.py`` end to end on a tiny checkpoint: runs, times, tables, accumulating rows."""
    _import_from("experiments")
    import glue_minilm

    root, folder = write_tiny_glue(tmp_path)
    results = tmp_path / "results"
    common = [
        f"--workdir={tmp_path / 'runs'}",
        f"--data={root / 'glue'}",
        f"--tfds-dir={tmp_path / 'tfds'}",
        f"--checkpoint={folder}",
        f"--results={results}",
        "--tasks=sst2",
        "--train-subset=24",
        "--batch-size=4",
        "--epochs=1",
        f"--seq-len={MAX_POS}",
        f"--speed-seq-len={MAX_POS}",
    ]
    args = [*common, "--variants=dense,flop"]
    assert glue_minilm.main(args) == 0
    first = {r["run"]: r for r in json.loads((results / "glue_minilm.json").read_text())["rows"]}
    dense, flop = first["sst2_dense"], first["sst2_flop"]
    assert flop["dev_reduced"]["reduced_valid_accuracy"] == pytest.approx(flop["dev"]["valid_accuracy"])
    assert flop["encoder_params"] <= dense["encoder_params"] and dense["encoder_ratio"] == 1.0
    assert set(flop["kept_ranks"]) == {f"layer_{i}/{p}" for i in range(2) for p in glue_minilm.PROJECTIONS}
    assert dense["speedup_vs_dense"] == 1.0 and flop["flop_ratio_vs_dense"] >= 1.0
    assert "--variants=dense,flop" in flop["made_by"]["command"] and flop["made_by"]["device"].startswith("cpu")
    # A later command with another variant adds its row, timed against the pretrained dense classifier (the
    # dense run is not part of it); the earlier rows stay as they were.
    assert glue_minilm.main([*common, "--variants=svd"]) == 0
    rows = json.loads((results / "glue_minilm.json").read_text())["rows"]
    assert [r["run"] for r in rows] == ["sst2_dense", "sst2_svd", "sst2_flop"]
    by_run = {r["run"]: r for r in rows}
    assert by_run["sst2_dense"] == dense and by_run["sst2_flop"] == flop
    svd = by_run["sst2_svd"]
    rank, sparsity = glue_minilm.equal_size_rank(str(folder), 0.5)
    assert svd["hard_sparsity"] == pytest.approx(sparsity) and sparsity >= 0.5 and not svd["kept_ranks"]
    assert svd["encoder_ratio"] == pytest.approx(svd["encoder_params"] / dense["encoder_params"])
    assert svd["encoder_ratio"] < 1 and svd["flop_ratio_vs_dense"] > 1 and svd["speedup_vs_dense"] > 0
    assert "--variants=svd" in svd["made_by"]["command"]
    table = (results / "glue_minilm.md").read_text()
    assert "| sst2_svd |" in table and f"top {rank} singular" in table
    assert "| sst2_flop |" in table and "| layer_1 |" in table
    assert table.count("--variants=dense,flop") == 1 and table.count("--variants=svd") == 1  # one line per command
    # Rerunning a command reuses the finished runs (not even finalized again) and rebuilds the table.
    stamps = {v: (tmp_path / "runs" / f"sst2_{v}" / "summary.json").stat().st_mtime_ns for v in ("dense", "flop")}
    assert glue_minilm.main(args) == 0
    assert stamps == {v: (tmp_path / "runs" / f"sst2_{v}" / "summary.json").stat().st_mtime_ns for v in stamps}
    again = {r["run"]: r for r in json.loads((results / "glue_minilm.json").read_text())["rows"]}
    assert again["sst2_flop"]["dev"] == flop["dev"] and again["sst2_svd"] == svd


def test_glue_script_refuses_bad_flags_in_one_line(tmp_path, capsys):
    _import_from("experiments")
    import glue_minilm

    root, _ = write_tiny_glue(tmp_path)
    base = [f"--workdir={tmp_path / 'runs'}", f"--data={root / 'glue'}"]
    for flag, words in (
        ("--variants=dense,prune", "--variants='dense,prune': unknown ['prune']"),
        ("--tasks=mnli2", "task='mnli2' is not a GLUE task"),
        ("--target=1.5", "--target=1.5 is out of range"),
        ("--variants=flop_distill", "flop_distill needs the dense runs (teachers) of ['sst2']"),
    ):
        assert glue_minilm.main([*base, flag]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert glue_minilm.main([f"--workdir={tmp_path}", f"--data={tmp_path / 'nowhere'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    results = tmp_path / "results"
    results.mkdir()
    (results / "glue_minilm.json").write_text('{"rows": [{"name": "x"}]}')  # not this script's rows
    assert glue_minilm.main([*base, "--tasks=sst2", f"--results={results}"]) == 2
    err = capsys.readouterr().err
    assert "is not a glue_minilm results file" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize("target,rank,sparsity", [(0.5, 128, 0.5), (0.7, 76, 1 - 76 * 6912 / 1769472)])
def test_equal_size_rank_hand_computed(tmp_path, target, rank, sparsity):
    # MiniLM-L6-H384 layer: q, k, v, out (384 x 384) and FFN (384 x 1536, 1536 x 384) hold 1,769,472 dense
    # weights; each unit of uniform rank costs 4 * 768 + 2 * 1920 = 6,912, so 0.5 keeps 884,736 / 6,912 = 128.
    _import_from("experiments")
    import glue_minilm

    hf = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12}
    hf.update(intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    got_rank, got_sparsity = glue_minilm.equal_size_rank(str(tmp_path), target)
    assert got_rank == rank and got_sparsity == pytest.approx(sparsity)


def test_every_task_gets_the_same_defaults_and_a_length_from_its_size(tmp_path):
    _import_from("experiments")
    import glue_minilm

    args = argparse.Namespace(
        data="d", tfds_dir="", checkpoint="", batch_size=32, train_subset=10000, epochs=2.0, evals=4, seq_len=64,
        target=0.5, workdir=str(tmp_path), hidden_weight=1.0,
    )
    stsb, rte = glue_minilm.config_for("stsb", "flop", args, 5749), glue_minilm.config_for("rte", "flop", args, 2490)
    assert stsb.train.steps == 360 and stsb.prune.target_warmup == 180  # ceil(2 * 5749 / 32)
    assert rte.train.steps == 156 and rte.train.eval_every == 39
    for name in ("gate_learning_rate", "multiplier_update", "multiplier"):  # no per-task rate anywhere
        assert stsb.optim[name] == rte.optim[name]
    assert stsb.optim.multiplier_update == "pi" and stsb.data.train_subset == 0
    sst2 = glue_minilm.config_for("sst2", "dense", args, 67349)
    assert sst2.data.train_subset == 10000 and sst2.train.steps == 625 and not sst2.prune.enabled
    svd = glue_minilm.config_for("mrpc", "svd", args, 3667, svd_rank=128)
    assert svd.model.factorized and svd.model.rank == 128 and not svd.prune.enabled
    distill = glue_minilm.config_for("mrpc", "flop_distill", args, 3667)
    assert distill.prune.enabled and distill.distill.teacher == str(tmp_path.resolve() / "mrpc_dense")
    assert distill.distill.hidden_weight == 1.0 and stsb.distill.teacher == ""


@pytest.mark.e2e
def test_compaction_speed_script_runs_both_runs_and_writes_the_table(tmp_path):
    """``experiments/compaction_speed.py`` on a small text file: two runs, the speed report, a rerun reuses them."""
    _import_from("experiments")
    import compaction_speed

    text = tmp_path / "corpus.txt"
    text.write_bytes(bytes(np.random.default_rng(0).integers(97, 123, 60_000).astype(np.uint8)))
    results = tmp_path / "results"
    args = [f"--data={text}", f"--workdir={tmp_path / 'runs'}", "--steps=40", "--compact-every=10",
            "--threshold=0.3", "--model=tiny", f"--results={results}"]
    assert compaction_speed.main(args) == 0
    rows = json.loads((results / "compaction_speed_tiny_corpus.json").read_text())["rows"]
    runs = {r["run"]: r for r in rows if r.get("kind") != "speed"}
    assert set(runs) == {"plain", "compacting"}
    assert all(0.0 <= r["hard_sparsity"] <= 1.0 and np.isfinite(r["valid_bpc"]) for r in runs.values())
    speed = next(r for r in rows if r.get("kind") == "speed")
    assert len(speed["logs"]) >= 5 and set(speed["step_tokens_per_s"]) == {"start shapes", "final compacted shapes"}
    table = (results / "compaction_speed_tiny_corpus.md").read_text()
    assert "| plain |" in table and "| compacting |" in table and "--model=tiny" in table
    assert (tmp_path / "runs" / "data" / "text.txt").resolve() == text.resolve()
    stamp = (tmp_path / "runs" / "plain" / "summary.json").stat().st_mtime_ns
    assert compaction_speed.main(args) == 0  # the finished runs are reused, not trained again
    assert (tmp_path / "runs" / "plain" / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "flag,message",
    [("--data={tmp}/missing.txt", "--data="), ("--target=1.5", "--target=1.5"), ("--model=huge", "--model='huge'"),
     ("--compact-every=0", "--compact-every=0")],
)
def test_compaction_speed_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys, flag, message):
    _import_from("experiments")
    import compaction_speed

    text = tmp_path / "corpus.txt"
    text.write_bytes(b"abc" * 1000)
    args = [f"--data={text}", f"--workdir={tmp_path / 'runs'}", flag.format(tmp=tmp_path)]
    assert compaction_speed.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("compaction_speed.py: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_compare_script_trains_dense_and_each_method_and_writes_table_json_and_plot(tmp_path):
    """``experiments/compare.py`` on a small text file: dense + two methods, the table and plot; a rerun reuses."""
    _import_from("experiments")
    import compare

    text = tmp_path / "corpus.txt"
    text.write_bytes(bytes(np.random.default_rng(0).integers(97, 123, 60_000).astype(np.uint8)))
    results = tmp_path / "results"
    args = [f"--data={text}", f"--workdir={tmp_path / 'runs'}", "--steps=12", "--levels=0.5",
            "--methods=flop,l0_block", "--model=tiny", f"--results={results}"]
    assert compare.main(args) == 0
    rows = json.loads((results / "compare_corpus.json").read_text())["rows"]
    setting, runs = rows[0]["setting"], {r["run"]: r for r in rows[1:]}
    assert set(runs) == {"dense", "flop_0.5", "l0_block_0.5"} and setting["vocab"] == "corpus"
    assert runs["dense"]["sparsity"] == 0.0 and runs["dense"]["kept_prunable_params"] == setting["reference_params"]
    for r in runs.values():
        assert np.isfinite(r["valid_bpc"]) and r["inference_tokens_per_s"] > 0 and r["train_tokens_per_s"] > 0
        assert r["kept_prunable_params"] == round((1 - r["sparsity"]) * setting["reference_params"])
    assert runs["l0_block_0.5"]["projections_bcoo_s"] > 0 and runs["flop_0.5"]["projections_bcoo_s"] is None
    table = (results / "compare_corpus.md").read_text()
    assert "| FLOP | 0.50 |" in table and "| L0 block | 0.50 |" in table and "--methods=flop,l0_block" in table
    assert (results / "compare_corpus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamp = (tmp_path / "runs" / "flop_0.5" / "summary.json").stat().st_mtime_ns
    assert compare.main(args) == 0  # the finished runs are reused, not trained again
    assert (tmp_path / "runs" / "flop_0.5" / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "flag,message",
    [("--data={tmp}/missing.txt", "--data="), ("--levels=0.5,1.0", "level 1.0 is not accepted"),
     ("--levels=-0.2", "level -0.2 is not accepted"), ("--levels=half", "--levels='half'"),
     ("--methods=flop,magnitude", "magnitude is not a method"), ("--model=huge", "--model='huge'"),
     ("--steps=3", "--steps=3")],
)
def test_compare_bad_input_is_one_line_before_anything_is_written(tmp_path, capsys, flag, message):
    _import_from("experiments")
    import compare

    text = tmp_path / "corpus.txt"
    text.write_bytes(b"abc" * 40_000)
    args = [f"--data={text}", f"--workdir={tmp_path / 'runs'}", flag.format(tmp=tmp_path)]
    assert compare.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("compare.py: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_compare_refuses_a_text_file_under_100_kb(tmp_path, capsys):
    _import_from("experiments")
    import compare

    text = tmp_path / "corpus.txt"
    text.write_bytes(b"abc" * 1000)
    assert compare.main([f"--data={text}", f"--workdir={tmp_path / 'runs'}"]) == 2
    assert "3,000 bytes; accepted: a text file of 100,000 bytes or more" in capsys.readouterr().err
