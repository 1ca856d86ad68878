"""Tests for flaxprune.models.word_sru: the word-level SRU with a tied adaptive embedding and softmax."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from flaxprune.models import WordSRUConfig, WordSRULanguageModel, build_model, model_for
from flaxprune.size import prunable_params, report, total_params
from flaxprune.surgery import shrink
from flaxprune.training.config import load_config_file
from flaxprune.training.lm_task import Evaluator

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "configs"
TINY = dict(vocab_size=40, d_model=8, n_layers=2, rank=4, d_embed=8, cutoffs=(6, 15), div_val=2, div_freq=1,
            dropout=0.0, loss_chunk=8)


def _model(**kw):
    return WordSRULanguageModel(WordSRUConfig(**{**TINY, **kw}))


def _init(model, batch=2, time=5):
    tokens = jnp.zeros((batch, time), jnp.int32)
    return model.init({"params": jax.random.key(0)}, tokens, model.initial_carry(batch))["params"]


def test_params_are_the_adaptive_layers_and_factorized_sru_layers():
    params = _init(_model())
    assert sorted(params) == ["embed", "layers_0", "layers_1", "softmax"]
    assert {k for k in params["embed"] if k.startswith("log_alpha")} == {"log_alpha_0", "log_alpha_1", "log_alpha_2"}
    assert params["embed"]["embedding_2"].shape == (25, 2)  # ids [15, 40), 8 // 2**2 dims
    assert sorted(params["softmax"]) == ["bias_0", "bias_1", "bias_2", "cluster_bias", "cluster_kernel"]  # tied
    assert sorted(params["layers_0"]["W"]) == ["P", "Q", "log_alpha"]
    untied = _init(_model(tie_weights=False))
    assert "embedding_0" in untied["softmax"] and "log_alpha_0" in untied["softmax"]
    assert not any(k.startswith("log_alpha") for k in _init(_model(prune_embeddings=False))["embed"])


@pytest.mark.parametrize("kw, message", [
    (dict(cutoffs=(6, 40)), r"cutoffs=\(6, 40\) must be strictly increasing token ids in the open interval "
                            r"\(0, n_token=40\)\. With vocab_size=40"),
    (dict(cutoffs=(15, 6)), r"cutoffs=\(15, 6\) must be strictly increasing"),
    (dict(rank=9), r"rank=9 must be None or in \[1, d_model=8\]"),
    (dict(div_freq=0), r"div_freq=0 must be an int >= 1"),
    (dict(loss_chunk=0), r"loss_chunk=0 must be an integer >= 1"),
])
def test_bad_config_is_one_clear_line(kw, message):
    with pytest.raises(ValueError, match=message):
        WordSRUConfig(**{**TINY, **kw})


def test_token_nll_equals_the_full_log_probs():
    model = _model()
    params = _init(model)
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.integers(0, 40, (2, 5))) for _ in range(2))
    carry = model.initial_carry(2)
    log_probs, c1 = model.apply({"params": params}, x, carry)
    np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    nll, c2 = model.apply({"params": params}, x, y, carry, method="token_nll")
    np.testing.assert_allclose(nll, -jnp.take_along_axis(log_probs, y[..., None], -1)[..., 0], rtol=1e-5)
    np.testing.assert_array_equal(c1["c"], c2["c"])


def _perplexity(model, params, ids):
    evaluator = Evaluator(model, Mesh(np.array(jax.devices()[:1]), ("data",)), batch_size=2, seq_len=6)
    total, count = evaluator.nll(params, ids)
    return float(np.exp(total / count))


def test_shrink_keeps_the_perplexity_and_cuts_each_bands_dims():
    model = _model()
    params = _init(model)
    la = dict(params["embed"])
    la["log_alpha_0"] = la["log_alpha_0"].at[:3].set(-10.0)  # band 0 loses 3 of 8 dims
    la["log_alpha_2"] = jnp.full_like(la["log_alpha_2"], -10.0)  # the rarest band loses all its dims
    params = {**params, "embed": la}
    w = dict(params["layers_1"]["W"])
    w["log_alpha"] = w["log_alpha"].at[1:].set(-10.0)  # one component of layer 1 kept
    params = {**params, "layers_1": {**params["layers_1"], "W": w}}
    reduced, config = shrink(params, model.config)
    assert config.plan.spec("embed").dims == (5, 4, 0)
    assert "embedding_2" not in reduced["embed"]
    ids = np.random.default_rng(1).integers(0, 40, 200).astype(np.int32)
    small = model_for(config)
    np.testing.assert_allclose(_perplexity(small, reduced, ids), _perplexity(model, params, ids), rtol=1e-5)
    assert total_params(reduced) < total_params(params)
    rows = {(r.path, r.kind): r for r in report(params, model.config)}
    assert (rows[("embed", "adaptive[0]")].rank, rows[("embed", "adaptive[0]")].full_rank) == (5, 8)
    assert rows[("embed", "adaptive[2]")].rank == 0


def test_embeddings_and_recurrent_layers_share_one_budget():
    params = _init(_model())
    # Every gate's weights: each band dim costs n_i + d_proj (counted once although tied), each component in + out.
    expected = 8 * (6 + 8) + 4 * (9 + 8) + 2 * (25 + 8) + 2 * 4 * (8 + 24)
    assert prunable_params(params) == expected


def test_the_paper_config_builds_abstractly_and_reports_its_size():
    c = load_config_file(CONFIGS / "sru_wt103.py")
    fields = {k: v for k, v in dict(c.model).items() if k != "name"}
    model, config = build_model(c.model.name, **fields, vocab_size=267_735)
    assert [d for _, _, d in config.clusters] == [2048, 2048, 512, 512, 128, 128]
    shapes = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 4), jnp.int32), model.initial_carry(1))
    )["params"]
    n = total_params(shapes)
    embedding = 10_000 * 2048 * 2 + 20_000 * 512 + 20_000 * 512 + 40_000 * 128 + 167_735 * 128 + (
        2048 * 2 + 512 * 2 + 128 * 2) * 2048
    recurrent = 12 * (512 * (2048 + 3 * 2048) + 4 * 2048)
    softmax = 267_735 + 2048 * 5 + 5
    gates = 2 * 2048 + 2 * 512 + 2 * 128 + 12 * 512
    assert n == embedding + recurrent + softmax + gates
    assert prunable_params(shapes) == embedding + recurrent - 12 * 4 * 2048
    assert dataclasses.replace(config, n_layers=1).n_layers == 1
