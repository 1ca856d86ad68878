"""End to end: a tiny model trained with the combined optimizer reaches its target, then shrinks."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

import flaxprune as fp
from flaxprune import cli, demo
from flaxprune.data import split_bytes, stdlib_text

TINY = demo.DemoConfig(
    context=4, embed_dim=4, hidden=48, layers=1, batch_size=64, steps=500, target=0.5, target_warmup=150,
    learning_rate=3e-3, gate_learning_rate=3e-2, lambda_learning_rate=3e-2, eval_every=500, corpus_bytes=60_000,
)


@pytest.fixture(scope="module")
def trained():
    data = split_bytes(stdlib_text(TINY.corpus_bytes))
    return data, demo.train(TINY, data, log=lambda _: None)


def test_flop_reaches_target_sparsity(trained):
    _, result = trained
    params = result["params"]
    assert abs(float(fp.hard_sparsity(params)) - TINY.target) <= 0.03
    assert abs(float(fp.expected_sparsity(params)) - TINY.target) <= 0.03
    assert result["history"][-1]["lambda_1"] != 0.0


def test_model_learns_and_shrinks_exactly(trained):
    data, result = trained
    params, model = result["params"], result["model"]
    evaluate = demo.make_eval_fn(model)
    bpc = evaluate(params, data["valid"])
    assert bpc < 6.0  # uniform over the bytes seen is log2(~100) = 6.6 bits
    small, small_cfg = fp.shrink(params, TINY)
    assert fp.total_params(small) < fp.total_params(params)
    ctx = demo.windows(data["valid"], TINY.context)[0][:512].astype(np.int32)
    gated = model.apply({"params": params}, ctx, deterministic=True)
    reduced = jax.jit(demo.ByteMLP(small_cfg).apply)({"params": small}, ctx)
    chex.assert_trees_all_close(reduced, gated, atol=1e-5)
    assert demo.make_eval_fn(demo.ByteMLP(small_cfg))(small, data["valid"]) == pytest.approx(bpc, abs=1e-4)


def test_demo_config_rejects_bad_target():
    with pytest.raises(ValueError, match=r"target=1.0 must be in \[0, 1\)"):
        dataclasses.replace(TINY, target=1.0)


def test_cli_demo_runs(capsys):
    argv = ["demo", "--steps", "20", "--hidden", "16", "--layers", "1", "--corpus-bytes", "20000", "--target-warmup", "5"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "reduced model" in out
