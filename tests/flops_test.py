"""Whole-model FLOP counts against hand-counted sums, surgery, and jax's own accounting."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.flops import FlopCount, flops_per_token, format_flops, param_bytes, theoretical_speedup
from flaxprune.models import (
    BertClassifier,
    BertConfig,
    SRUConfig,
    SRULanguageModel,
    TransformerXL,
    TransformerXLConfig,
)
from flaxprune.models.bert import BertEncoder

OPEN, SHUT = 10.0, -10.0  # log_alpha surely kept / surely cut by the eval mask

SRU = SRUConfig(vocab_size=7, d_model=4, n_layers=2, rank=2)  # embed = min(7, 4) = 4 = d: layer 0's W has k = 3
TXL = TransformerXLConfig(vocab_size=5, n_layers=1, n_heads=2, d_model=4, d_head=2, d_inner=6, mem_len=3, rank=2)
BERT = BertConfig(
    vocab_size=11, hidden_size=4, num_layers=1, num_heads=2, intermediate_size=6, max_position=8, num_labels=3
)
BERT_GATED = dataclasses.replace(BERT, factorized=True, gated=True)  # full rank: 4 components everywhere


def model_of(cfg):
    return {SRUConfig: SRULanguageModel, TransformerXLConfig: TransformerXL, BertConfig: BertClassifier}[type(cfg)](cfg)


def model_args(cfg, batch=1, time=3):
    tokens = jnp.zeros((batch, time), jnp.int32)
    return (tokens,) if isinstance(cfg, BertConfig) else (tokens, model_of(cfg).initial_carry(batch))


@functools.cache
def abstract_params(cfg):
    return jax.eval_shape(model_of(cfg).init, jax.random.key(0), *model_args(cfg))["params"]


def numpy_params(cfg, log_alphas=None):
    """Params of ``cfg``'s shapes from numpy (no XLA init), with ``log_alpha`` at ``path`` set from ``log_alphas``."""
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), abstract_params(cfg))
    for path, values in (log_alphas or {}).items():
        node = params
        for key in path.split("/"):
            node = node[key]
        node["log_alpha"] = jnp.asarray(values, jnp.float32)
    return params


def count(params, cfg, seq_len, batch=1):
    return flops_per_token(params, cfg, seq_len=seq_len, batch=batch)


# --- SRU ---------------------------------------------------------------------------


def sru_tiny_per_token():
    """SRU: vocab 7, d 4, 2 layers, rank 2, gated; per token, counted by hand."""
    d = 4
    recurrence = d * (2 + 4 + 2 + 4 + 3)  # f, r: v*c (mul) + U (add) + sigmoid (4) each; c = U0 + (c - U0) * f (3)
    layer = 2 * d + recurrence + 3 * d  # + b_f, + b_r; the highway mix h = x + (c - x) * r (3)
    return (
        4 + 2 * 4 * 12  # layers_0/W: input-gated [4, 3 * 4]: gate multiply on 4 inputs, then the matmul
        + layer
        + 2 * 4 * 2 + 2 * 2 * 12 + 2  # layers_1/W: P [4, 2], Q [2, 12] and 2 gate multiplies
        + layer
        + 2 * 4 * 7 + 7  # output: [4, 7] and its bias (the embedding lookup is 0)
    )  # fmt: skip


def test_sru_hand_count():
    assert sru_tiny_per_token() == 389
    c = count(numpy_params(SRU), SRU, seq_len=5, batch=2)  # every SRU term is per token
    assert c.forward == 389 * 10 and c.total == 389.0
    assert c.by_op("gate") == (4 + 2) * 10 and c.by_op("recurrence") == 2 * 4 * 15 * 10


def test_sru_highway_block_u3():
    """embed 3 != d 4: layer 0's W has a fourth block U3 (the highway input); ungated, no gate multiplies."""
    cfg = SRUConfig(vocab_size=7, d_model=4, n_layers=2, rank=2, embed_dim=3, gated=False)
    layer = 2 * 4 + 4 * 15 + 3 * 4
    expected = 2 * 3 * 16 + layer + (2 * 4 * 2 + 2 * 2 * 12) + layer + 2 * 4 * 7 + 7
    assert count(numpy_params(cfg), cfg, seq_len=4).total == expected == 383


def test_gated_and_ungated_differ_by_the_gate_multiplies():
    ungated = dataclasses.replace(SRU, gated=False)
    diff = count(numpy_params(SRU), SRU, 4).forward - count(numpy_params(ungated), ungated, 4).forward
    assert diff == 4 * (4 + 2)  # 4 tokens x (4 input gates of layer 0 + 2 components of layer 1)
    txl_ungated = dataclasses.replace(TXL, gated=False)
    diff = count(numpy_params(TXL), TXL, 2).forward - count(numpy_params(txl_ungated), txl_ungated, 2).forward
    assert diff == 5 * 2 + 5 * 2 + 3 * (2 * 2)  # rank 2: qkv and r over klen = 5 rows; o, ff_in, ff_out over 2 tokens


@pytest.mark.parametrize(
    "alphas,drop",
    [
        # layer 0 keeps inputs 0, 2: gate 4 -> 0, matmul 2*4*12 -> 2*2*12 (the gather is free): 52;
        # layer 1 keeps 1 of 2 components: gate 2 -> 0, 2*4*2 + 2*2*12 = 64 -> 2*4*1 + 2*1*12 = 32: 34.
        ({"layers_0/W": [OPEN, SHUT, OPEN, SHUT], "layers_1/W": [OPEN, SHUT]}, 52 + 34),
        # layer 1 keeps nothing and has no bias: its W is gone (64 + 2); layer 0 keeps all but loses its gates (4).
        ({"layers_0/W": [OPEN] * 4, "layers_1/W": [SHUT, SHUT]}, 4 + 66),
    ],
)
def test_sru_shrink_drops_the_cut_components(alphas, drop):
    params = numpy_params(SRU, alphas)
    small, small_cfg = fp.shrink(params, SRU)
    before, after = count(params, SRU, 6), count(small, small_cfg, 6)
    assert before.total - after.total == drop
    assert after.by_op("gate") == 0
    assert theoretical_speedup(params, SRU, small, small_cfg, seq_len=6) == 389 / (389 - drop)


# --- Transformer-XL -----------------------------------------------------------------


def txl_tiny_forward(qlen, mlen, batch=1):
    """TXL: vocab 5, 1 layer, 2 heads of 2, d_model 4, d_inner 6, rank 2, gated, post-norm; the whole forward."""
    klen, tokens = qlen + mlen, batch * qlen
    scores = batch * 2 * qlen * klen  # [batch, heads, qlen, klen]
    norm = 7 * 4 + 7  # Flax LayerNorm (fast variance) over 4 features
    return (
        tokens * 4  # embedding * sqrt(d_model)
        + batch * klen * (2 * 4 * 2 + 2 * 2 * 12 + 2)  # qkv over [mems; segment]: P [4, 2], Q [2, 12], gates
        + klen * (2 * 4 * 2 + 2 * 2 * 4 + 2)  # r on the position table, once per call: P [4, 2], Q [2, 4]
        + tokens * 2 * 4  # q + r_w_bias, q + r_r_bias
        + scores * 2 * 2 * 2  # AC and BD, over head_dim 2 (rel_shift is a copy)
        + scores * 3  # AC + BD, * 1/sqrt(d_head), where(mask)
        + scores * 5 + batch * 2 * qlen  # softmax over klen: max, sub, exp, sum, div; max(., -inf) per row
        + scores * 2 * 2  # probs @ values
        + tokens * (2 * 4 * 2 + 2 * 2 * 4 + 2)  # o
        + tokens * 4 + tokens * norm  # residual, attn/norm
        + tokens * (2 * 4 * 2 + 2 * 2 * 6 + 2 + 6)  # ff_in with bias
        + tokens * 6  # relu
        + tokens * (2 * 6 * 2 + 2 * 2 * 4 + 2 + 4)  # ff_out with bias
        + tokens * 4 + tokens * norm  # residual, ff/norm
        + tokens * (2 * 4 * 5 + 5)  # tied output layer h @ E^T and out_bias
    )  # fmt: skip


def test_txl_hand_count():
    c = count(numpy_params(TXL), TXL, seq_len=2)
    assert txl_tiny_forward(2, 3) == 1442
    assert c.forward == 1442 and c.total == 721.0


@pytest.mark.parametrize("qlen,mlen,batch", [(1, 0, 1), (2, 3, 2), (7, 5, 3)])
def test_txl_attention_grows_with_seq_and_memory(qlen, mlen, batch):
    cfg = dataclasses.replace(TXL, mem_len=mlen)
    c = count(numpy_params(cfg), cfg, seq_len=qlen, batch=batch)
    assert c.forward == txl_tiny_forward(qlen, mlen, batch)


def test_txl_position_projection_runs_once_per_call():
    params = numpy_params(TXL)
    one, two = count(params, TXL, 2, batch=1), count(params, TXL, 2, batch=2)
    assert two.forward == 2 * one.forward - 5 * (32 + 2)  # the r projection over klen = 5 is not repeated


# --- BERT -------------------------------------------------------------------------


def bert_tiny_forward(time):
    """Dense BERT classifier: H 4, 1 layer, 2 heads of 2, intermediate 6, 3 labels; one sequence."""
    norm = 8 * 4 + 4  # Flax two-pass LayerNorm over 4 features
    scores = 2 * time * time
    return (
        time * 2 * 4 + time * norm  # word + position + token type (lookups are 0), embeddings/norm
        + 3 * time * (2 * 4 * 4 + 4)  # query, key, value with biases
        + scores * 2 * 2  # q . k over head_dim 2
        + scores * 2  # / sqrt(head_dim), + mask bias
        + scores * 5 + 2 * time  # softmax over time
        + scores * 2 * 2  # probs @ values
        + time * (2 * 4 * 4 + 4) + time * 4 + time * norm  # attention output, residual, output_norm
        + time * (2 * 4 * 6 + 6) + time * 5 * 6  # intermediate, exact GELU (5 ops)
        + time * (2 * 6 * 4 + 4) + time * 4 + time * norm  # output, residual, output_norm
        + (2 * 4 * 4 + 4) + 4  # pooler on [CLS] and tanh, once per sequence
        + (2 * 4 * 3 + 3)  # classifier, once per sequence
    )  # fmt: skip


def test_bert_hand_count():
    c = count(numpy_params(BERT), BERT, seq_len=3)
    assert bert_tiny_forward(3) == 1555
    assert c.forward == 1555 and c.total == pytest.approx(1555 / 3)
    assert count(numpy_params(BERT), BERT, seq_len=8, batch=2).forward == 2 * bert_tiny_forward(8)


def test_bert_encoder_has_no_classifier():
    params = jax.eval_shape(BertEncoder(BERT).init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32))["params"]
    assert count(params, BERT, 3).forward == bert_tiny_forward(3) - (2 * 4 * 3 + 3)


def test_bert_shrink_merges_cuts_and_empties_layers():
    layer = "bert/encoder/layer_0"
    alphas = {
        f"{layer}/attention/query": [OPEN, OPEN, OPEN, SHUT],  # 3 (4 + 4) >= 16: merged into a kernel
        f"{layer}/attention/key": [SHUT] * 4,  # nothing kept: bias only
        f"{layer}/attention/value": [OPEN] * 4,
        f"{layer}/attention/output": [OPEN] * 4,
        f"{layer}/intermediate": [OPEN, SHUT, SHUT, SHUT],  # 1 (4 + 6) < 24: factors P [4, 1], Q [1, 6]
        f"{layer}/output": [OPEN] * 4,  # 4 (6 + 4) >= 24: merged
    }
    params = numpy_params(BERT_GATED, alphas)
    small, small_cfg = fp.shrink(params, BERT_GATED)
    square = 2 * 4 * 4 + 2 * 4 * 4 + 4  # a gated full-rank [4, 4] layer: P, Q, 4 gate multiplies
    drop = (
        (square - 2 * 4 * 4)  # query, merged: a dense [4, 4] matmul
        + (square - 0)  # key: zeros + bias, the bias add stays
        + 2 * (square - 2 * 4 * 4)  # value, attention output: merged
        + (2 * 4 * 4 + 2 * 4 * 6 + 4) - (2 * 4 * 1 + 2 * 1 * 6)  # intermediate: rank 4 gated -> rank 1
        + (2 * 6 * 4 + 2 * 4 * 4 + 4) - 2 * 6 * 4  # output [6, 4]: merged
    )  # fmt: skip
    before, after = count(params, BERT_GATED, 3), count(small, small_cfg, 3)
    assert before.forward - after.forward == 3 * drop
    assert after.forward == bert_tiny_forward(3) - 3 * (2 * 4 * 4) + 3 * (2 * 4 * 1 + 2 * 1 * 6 - 2 * 4 * 6)
    assert theoretical_speedup(params, BERT_GATED, small, small_cfg, seq_len=3) == before.forward / after.forward


# --- cross-checks against jax ---------------------------------------------------------


def dot_flops(jaxpr) -> int:
    """``2 * out * contracted`` of every ``dot_general`` in a jaxpr, into sub-jaxprs (jit, custom_jvp, scan)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))
        for key in ("jaxpr", "call_jaxpr"):
            sub = eqn.params.get(key)
            if sub is not None:
                times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
                total += times * dot_flops(getattr(sub, "jaxpr", sub))
    return total


MATMUL_OPS = ("matmul", "scores", "scores AC", "scores BD", "probs @ values")


@pytest.mark.parametrize("cfg", [SRU, TXL, dataclasses.replace(TXL, pre_lnorm=True, n_layers=2), BERT_GATED])
def test_matmul_terms_equal_the_models_dot_products(cfg):
    batch, time = 2, 3
    params, model = numpy_params(cfg), model_of(cfg)
    jaxpr = jax.make_jaxpr(lambda p, *a: model.apply({"params": p}, *a))(params, *model_args(cfg, batch, time))
    c = count(params, cfg, time, batch)
    assert sum(r.flops for r in c.rows if r.op in MATMUL_OPS) == dot_flops(jaxpr.jaxpr)


def test_loosely_agrees_with_xla_cost_analysis():
    cfg = BertConfig(
        vocab_size=50, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_position=32
    )
    batch, time = 2, 32
    model = BertClassifier(cfg)
    tokens = jnp.zeros((batch, time), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]
    cost = jax.jit(lambda p, t: model.apply({"params": p}, t)).lower(params, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost or "flops" not in cost:
        pytest.skip("this XLA backend gives no cost analysis")
    ours = count(params, cfg, time, batch).forward
    assert 0.5 < cost["flops"] / ours < 2.0, (cost["flops"], ours)  # XLA counts transcendentals apart, fuses...


# --- the report, bytes, errors -----------------------------------------------------------


def test_format_and_param_bytes():
    c = count(numpy_params(SRU), SRU, 5)
    table = format_flops(c)
    assert "layers_0/W" in table and "recurrence" in table and "389.0" in table
    assert isinstance(c, FlopCount) and all(r.flops > 0 for r in c.rows)
    tree = {"a": jnp.zeros((2, 3), jnp.float32), "b": {"c": jnp.zeros((5,), jnp.bfloat16)}}
    assert param_bytes(tree) == 2 * 3 * 4 + 5 * 2
    assert param_bytes(jax.eval_shape(lambda: tree)) == 34


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(config=fp.Plan()), r"config is a Plan.*SRUConfig.*TransformerXLConfig.*BertConfig"),
        (dict(seq_len=0), r"seq_len=0 must be an int >= 1"),
        (dict(seq_len=True), r"seq_len=True"),
        (dict(seq_len=2.0), r"seq_len=2.0"),
        (dict(batch=0), r"batch=0 must be an int >= 1"),
        (dict(config=BERT, seq_len=9), r"seq_len=9 exceeds BertConfig.max_position=8.*\[1, 8\]"),
        (dict(config=TXL), r"nothing at 'r_w_bias'.*TransformerXLConfig"),
        (dict(params={"params": {}}), r"variables dict"),
        (dict(params=[1]), r"params must be a Flax params mapping"),
    ],
)
def test_bad_inputs_name_the_parameter(kwargs, match):
    args = dict(params=numpy_params(SRU), config=SRU, seq_len=4, batch=1) | kwargs
    with pytest.raises(ValueError, match=match):
        flops_per_token(args["params"], args["config"], seq_len=args["seq_len"], batch=args["batch"])
