"""Transformer-XL: shapes, memory (exactness against one long call), gradients, surgery and config errors."""

import dataclasses
import re
import zlib

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.models.transformer_xl import TransformerXL, TransformerXLConfig, rel_shift

TINY = TransformerXLConfig(
    vocab_size=13, n_layers=2, n_heads=2, d_model=8, d_head=4, d_inner=16, mem_len=6, dropout=0.0
)
BATCH, SEG = 2, 6
TOKENS = jax.random.randint(jax.random.key(0), (BATCH, 2 * SEG), 0, TINY.vocab_size)


def _params(config):
    """Params of ``config``'s model with shapes from ``eval_shape`` and numpy values: no init to compile.

    ``log_alpha`` is spread around 2 so the eval mask keeps soft values below 1,
    which makes the surgery check stronger. ``test_init_runs_and_matches_the_abstract_tree`` runs the real init.
    """
    model = TransformerXL(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), TOKENS[:, :SEG], model.initial_carry(BATCH))["params"]

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        x = rng.normal(size=leaf.shape)
        if name.endswith("['log_alpha']"):
            x = x + 2.0
        elif name.endswith("['scale']"):
            x = 1.0 + 0.1 * x
        else:
            x = 0.3 * x
        return jnp.asarray(x, leaf.dtype)

    return model, jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model):
    return jax.jit(model.apply, static_argnames="deterministic")


MODEL, PARAMS = _params(TINY)
APPLY = _apply(MODEL)
NOMEM = TransformerXL(dataclasses.replace(TINY, mem_len=0))  # one call over the whole stream, no memory
FULL = _apply(NOMEM)


def _run(params, tokens, carry=None, apply=APPLY, model=MODEL, **kw):
    carry = model.initial_carry(tokens.shape[0]) if carry is None else carry
    return apply({"params": params}, tokens, carry, **kw)


def test_shapes_dtypes_and_carry_structure():
    carry = MODEL.initial_carry(BATCH)
    chex.assert_shape(carry["mems"], (BATCH, 2, 6, 8))
    chex.assert_trees_all_equal(carry["length"], jnp.zeros((BATCH,), jnp.int32))
    logits, new = _run(PARAMS, TOKENS[:, :3], carry)
    chex.assert_shape(logits, (BATCH, 3, 13))
    assert logits.dtype == jnp.float32
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)  # stable under jit / scan
    chex.assert_trees_all_equal(new["length"], jnp.full((BATCH,), 3, jnp.int32))
    # Layer 0's memory is its input, the scaled embedding, most recent last.
    embedded = PARAMS["embed"]["embedding"][TOKENS[:, :3]] * np.sqrt(8)
    chex.assert_trees_all_close(new["mems"][:, 0], jnp.concatenate([jnp.zeros((BATCH, 3, 8)), embedded], 1))
    for start in (3, 6):
        _, new = _run(PARAMS, TOKENS[:, start : start + 3], new)
    chex.assert_trees_all_equal(new["length"], jnp.full((BATCH,), 6, jnp.int32))  # capped at mem_len
    embedded = PARAMS["embed"]["embedding"][TOKENS[:, 3:9]] * np.sqrt(8)
    chex.assert_trees_all_close(new["mems"][:, 0], embedded, atol=1e-6)


def test_param_paths():
    flat = {"/".join(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(PARAMS)}
    layer = {
        "attn/qkv/P", "attn/qkv/Q", "attn/qkv/log_alpha",
        "attn/r/P", "attn/r/Q", "attn/r/log_alpha",
        "attn/o/P", "attn/o/Q", "attn/o/log_alpha",
        "attn/norm/scale", "attn/norm/bias",
        "ff/ff_in/P", "ff/ff_in/Q", "ff/ff_in/log_alpha", "ff/ff_in/bias",
        "ff/ff_out/P", "ff/ff_out/Q", "ff/ff_out/log_alpha", "ff/ff_out/bias",
        "ff/norm/scale", "ff/norm/bias",
    }  # fmt: skip
    expected = {"embed/embedding", "out_bias", "r_w_bias", "r_r_bias"}
    expected |= {f"layers_{i}/{p}" for i in range(2) for p in layer}
    assert flat == expected
    chex.assert_shape(PARAMS["layers_0"]["attn"]["qkv"]["P"], (8, fp.default_rank(8, 24)))
    chex.assert_shape(PARAMS["layers_0"]["attn"]["r"]["Q"], (fp.default_rank(8, 8), 8))


def test_paper_size_builds_abstractly_with_closed_form_param_count():
    config = TransformerXLConfig()  # enwik8 base: 12 layers, d_model 512, 8 heads, d_inner 2048
    model = TransformerXL(config)
    tokens = jax.ShapeDtypeStruct((1, 512), jnp.int32)
    shapes = jax.eval_shape(lambda k, t: model.init(k, t, model.initial_carry(1)), jax.random.key(0), tokens)
    v, d, h, dh, di, n = 256, 512, 8, 64, 2048, 12

    def fact(i, o, bias):  # P, Q, log_alpha (+ bias) at the parameter-neutral rank
        r = fp.default_rank(i, o)
        return r * (i + o) + r + (o if bias else 0)

    layer = fact(d, 3 * h * dh, False) + fact(d, h * dh, False) + fact(h * dh, d, False)
    layer += fact(d, di, True) + fact(di, d, True) + 2 * 2 * d  # two LayerNorms
    expected = v * d + v + 2 * h * dh + n * layer
    assert fp.total_params(shapes["params"]) == expected
    assert 40e6 < expected < 42e6  # ~41M, the paper's 41M-parameter enwik8 Transformer-XL


def test_rel_shift_matches_definition():
    qlen, klen = 3, 5
    x = jnp.arange(qlen * klen, dtype=jnp.float32).reshape(qlen, klen)
    y = rel_shift(x)
    for i in range(qlen):
        for j in range(klen - qlen + i + 1):  # the visible keys; later ones are garbage by design
            assert y[i, j] == x[i, j + qlen - 1 - i]


@pytest.mark.parametrize("seg, n_segments", [(6, 2), (3, 3)])  # memory always full / half real, then full
def test_segments_with_memory_equal_one_long_call(seg, n_segments):
    """Memory, masking and relative positions together: mem_len covers the whole past."""
    total = seg * n_segments
    tokens = TOKENS[:, :total]
    full, _ = _run(PARAMS, tokens, apply=FULL, model=NOMEM)
    carry, outs = None, []
    for start in range(0, total, seg):
        logits, carry = _run(PARAMS, tokens[:, start : start + seg], carry)
        outs.append(logits)
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def test_fresh_start_equals_no_memory_and_ignores_stale_slots():
    expected, _ = _run(PARAMS, TOKENS, apply=FULL, model=NOMEM)
    expected = expected[:, :SEG]  # causal: the first segment of the long call saw no memory
    fresh, _ = _run(PARAMS, TOKENS[:, :SEG])
    chex.assert_trees_all_close(fresh, expected, atol=1e-5)
    garbage = {
        "mems": 5.0 * jax.random.normal(jax.random.key(7), (BATCH, 2, 6, 8)),
        "length": jnp.zeros(BATCH, jnp.int32),
    }
    stale, _ = _run(PARAMS, TOKENS[:, :SEG], garbage)
    chex.assert_trees_all_close(stale, expected, atol=1e-5)
    # Restarting one stream: row 0 starts fresh, row 1 keeps its memory.
    _, carry = _run(PARAMS, TOKENS[:, :SEG])
    carry = {**carry, "length": carry["length"].at[0].set(0)}
    mixed, _ = _run(PARAMS, TOKENS[:, SEG:], carry)
    alone, _ = _run(PARAMS, TOKENS[:, SEG:])
    chex.assert_trees_all_close(mixed[0], alone[0], atol=1e-5)
    assert not np.allclose(mixed[1], alone[1], atol=1e-3)


def _loss(logits, tokens):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))


def test_memory_is_detached():
    a, b = TOKENS[:, :SEG], TOKENS[:, SEG:]
    _, carry = _run(PARAMS, a)

    def loss_b_of_mems(mems):
        logits, _ = MODEL.apply({"params": PARAMS}, b, {**carry, "mems": mems})
        return _loss(logits, b)

    grad = jax.jit(jax.grad(loss_b_of_mems))(carry["mems"])
    chex.assert_trees_all_equal(grad, jnp.zeros_like(grad))


def test_memory_is_carried():
    _, carry = _run(PARAMS, TOKENS[:, :SEG])
    _, other = _run(PARAMS, (TOKENS[:, :SEG] + 1) % TINY.vocab_size)
    logits, _ = _run(PARAMS, TOKENS[:, SEG:], carry)
    changed, _ = _run(PARAMS, TOKENS[:, SEG:], other)
    assert not np.allclose(logits, changed, atol=1e-4)


def test_init_runs_and_matches_the_abstract_tree():
    config = dataclasses.replace(TINY, n_layers=1)  # on CPU every random initializer costs compile time
    model, fake = _params(config)
    key = jax.random.key(1, impl="unsafe_rbg")  # compiles in half the time of threefry on CPU
    params = jax.jit(model.init)(key, TOKENS[:, :SEG], model.initial_carry(BATCH))["params"]
    chex.assert_trees_all_equal_shapes_and_dtypes(params, fake)
    chex.assert_trees_all_equal(params["out_bias"], jnp.zeros(13))
    assert 0.005 < float(jnp.std(params["embed"]["embedding"])) < 0.05  # normal(0.02), as the reference


def test_training_mode_needs_both_rngs():
    model = TransformerXL(dataclasses.replace(TINY, dropout=0.1, dropatt=0.1))
    carry, tokens = model.initial_carry(BATCH), TOKENS[:, :SEG]

    def train(rngs):  # traced only: dropout sites are costly to compile on CPU, and tracing checks them all
        return jax.eval_shape(
            lambda p: model.apply({"params": p}, tokens, carry, deterministic=False, rngs=rngs), PARAMS
        )

    with pytest.raises(ValueError, match="gates"):
        train({"dropout": jax.random.key(0)})
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        train({"gates": jax.random.key(0)})
    logits, new = train({"gates": jax.random.key(0), "dropout": jax.random.key(1)})
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)
    assert logits.shape == (BATCH, SEG, 13) and logits.dtype == jnp.float32


def test_training_gradients_reach_every_gate():
    model = TransformerXL(dataclasses.replace(TINY, n_layers=1))
    _, params = _params(model.config)
    carry, tokens = model.initial_carry(BATCH), TOKENS[:, :SEG]

    @jax.jit
    def grads(params, key):
        def loss(p):
            logits, _ = model.apply({"params": p}, tokens, carry, deterministic=False, rngs={"gates": key})
            return _loss(logits, tokens)

        return jax.grad(loss)(params)

    g = grads(params, jax.random.key(3))
    for sub, name in [("attn", "qkv"), ("attn", "r"), ("attn", "o"), ("ff", "ff_in"), ("ff", "ff_out")]:
        la = g["layers_0"][sub][name]["log_alpha"]
        assert np.all(np.isfinite(la)) and np.any(la != 0), (sub, name)
    assert np.any(g["r_r_bias"] != 0) and np.any(g["r_w_bias"] != 0)
    chex.assert_trees_all_equal(grads(params, jax.random.key(4)), grads(params, jax.random.key(4)))
    assert not np.allclose(g["out_bias"], grads(params, jax.random.key(4))["out_bias"])  # the key matters


def test_shrink_equals_gated_model_in_eval_mode():
    params = jax.tree.map(lambda x: x, PARAMS)
    for i, (sub, name) in enumerate([("attn", "qkv"), ("attn", "r"), ("attn", "o"), ("ff", "ff_in"), ("ff", "ff_out")]):
        node = params[f"layers_{i % 2}"][sub][name]
        node["log_alpha"] = node["log_alpha"].at[: 1 + i % 2].set(-10.0)
    params["layers_1"]["attn"]["o"]["log_alpha"] = jnp.full_like(params["layers_1"]["attn"]["o"]["log_alpha"], -10.0)
    small, small_cfg = fp.shrink(params, TINY)
    assert isinstance(small_cfg, TransformerXLConfig) and small_cfg.plan != TINY.plan
    assert fp.total_params(small) < fp.total_params(params)
    small_model = TransformerXL(small_cfg)
    small_apply = _apply(small_model)
    carry_big = carry_small = None
    for start in (0, SEG):  # two segments, so the memory of the shrunk model is checked too
        seg = TOKENS[:, start : start + SEG]
        big, carry_big = _run(params, seg, carry_big)
        out, carry_small = _run(small, seg, carry_small, apply=small_apply, model=small_model)
        chex.assert_trees_all_close(out, big, atol=1e-5)
        chex.assert_trees_all_close(carry_small, carry_big, atol=1e-5)


def test_pre_lnorm_variant_runs():
    config = dataclasses.replace(TINY, pre_lnorm=True, n_layers=1)
    model, params = _params(config)
    assert "final_norm" in params
    apply = _apply(model)
    logits, carry = _run(params, TOKENS[:, :SEG], apply=apply, model=model)
    logits_b, _ = _run(params, TOKENS[:, SEG:], carry, apply=apply, model=model)
    full_model = TransformerXL(dataclasses.replace(config, mem_len=0))
    full, _ = _run(params, TOKENS, apply=_apply(full_model), model=full_model)
    chex.assert_trees_all_close(jnp.concatenate([logits, logits_b], axis=1), full, atol=1e-5)


def test_ungated_and_explicit_rank():
    _, params = _params(dataclasses.replace(TINY, gated=False, rank=3))
    assert "log_alpha" not in params["layers_0"]["attn"]["qkv"]
    chex.assert_shape([params["layers_0"]["ff"]["ff_in"]["P"], params["layers_1"]["attn"]["o"]["Q"]], [(8, 3), (3, 8)])


def test_bfloat16_compute_keeps_float32_logits_and_a_stable_carry():
    model = TransformerXL(dataclasses.replace(TINY, dtype=jnp.bfloat16))
    carry = model.initial_carry(BATCH)
    assert carry["mems"].dtype == jnp.bfloat16
    logits, new = jax.eval_shape(lambda p: model.apply({"params": p}, TOKENS[:, :SEG], carry), PARAMS)
    assert logits.dtype == jnp.float32
    chex.assert_trees_all_equal_shapes_and_dtypes(new, carry)


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("n_layers", 0),
        ("n_heads", -1),
        ("d_model", 0),
        ("d_head", 0),
        ("d_inner", 1.5),
        ("mem_len", -1),
        ("dropout", 1.0),
        ("dropatt", -0.1),
        ("rank", 0),
        ("pre_lnorm", "yes"),
        ("plan", None),
    ],
)
def test_bad_config_raises_naming_field(field, value):
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}")):
        dataclasses.replace(TINY, **{field: value})


def test_bad_inputs_raise():
    carry = MODEL.initial_carry(BATCH)
    with pytest.raises(ValueError, match="tokens must be"):
        MODEL.apply({"params": PARAMS}, TOKENS[0], carry)
    with pytest.raises(ValueError, match=r"carry\['mems'\]"):
        MODEL.apply({"params": PARAMS}, TOKENS[:1, :SEG], carry)
    with pytest.raises(ValueError, match="batch_size"):
        MODEL.initial_carry(0)


@pytest.mark.parametrize(
    "fields,top",
    [
        (dict(d_model=32, n_heads=2, d_head=16, d_inner=64), 32),  # d_model is the least side
        (dict(d_model=32, n_heads=2, d_head=8, d_inner=64), 16),  # r: [32, 16], o: [16, 32]
        (dict(d_model=32, n_heads=2, d_head=16, d_inner=24), 24),  # ff_in: [32, 24]
    ],
)
def test_a_rank_above_min_in_out_of_every_projection_is_refused(fields, top):
    match = rf"TransformerXLConfig: rank={top + 1} must be None .* = \[1, {top}\]: every projection"
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **fields, rank=top + 1)
    with pytest.raises(ValueError, match=r"rank=1000 must be None"):
        dataclasses.replace(TINY, **fields, rank=1000)
    assert dataclasses.replace(TINY, **fields, rank=top).max_rank == top
