"""SRULanguageModel: shapes, the recurrence against a reference, carry, modes, surgery, config errors."""

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.gates import deterministic_mask
from flaxprune.models.sru import SRUConfig, SRULanguageModel, forget_scan, sru_recurrence

TINY = SRUConfig(vocab_size=11, d_model=8, n_layers=2, embed_dim=5, rank=3)
BATCH, TIME = 2, 7
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 11, (BATCH, TIME)), jnp.int32)

# XLA compiles dominate this file's time on CPU, threefry's above all (every shape drawn compiles its
# own kernel), so: test data come from numpy, the model's keys are 'rbg' keys (half the compile time;
# the model takes any typed key), only TINY runs the real init (jitted, once), and each config's eval
# function is jitted once and shared.


def rng_key(seed):
    return jax.random.key(seed, impl="rbg")


@functools.cache
def init():
    """(model, params) of TINY from its real initialisers."""
    model = SRULanguageModel(TINY)
    return model, jax.jit(model.init)(rng_key(1), TOKENS, model.initial_carry(BATCH))["params"]


@functools.cache
def abstract_params(cfg):
    model = SRULanguageModel(cfg)
    return jax.eval_shape(model.init, jax.random.key(0), TOKENS, model.initial_carry(BATCH))["params"]


def numpy_params(cfg, seed=0):
    """Params of ``cfg``'s shapes and dtypes, every leaf drawn from N(0, 0.5^2) by numpy."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), abstract_params(cfg))


@functools.cache
def eval_fn(cfg):
    model = SRULanguageModel(cfg)
    return jax.jit(lambda p, tokens, carry: model.apply({"params": p}, tokens, carry))


def random_carry(cfg=TINY, seed=5):
    c = np.random.default_rng(seed).normal(size=(BATCH, cfg.n_layers, cfg.d_model))
    return {"c": jnp.asarray(c, jnp.float32)}


def shapes(params):
    return jax.tree.map(np.shape, params)


def test_shapes_dtypes_and_param_paths():
    model, params = init()
    logits, carry = eval_fn(TINY)(params, TOKENS, model.initial_carry(BATCH))
    chex.assert_shape(logits, (BATCH, TIME, 11))
    chex.assert_type(logits, jnp.float32)
    assert set(carry) == {"c"}
    chex.assert_shape(carry["c"], (BATCH, 2, 8))
    chex.assert_type(carry["c"], jnp.float32)
    s = shapes(params)
    assert s["embed"]["embedding"] == (11, 5)
    assert s["layers_0"]["W"] == {"kernel": (5, 4 * 8), "log_alpha": (5,)}  # input size 5 != 8: k = 4
    assert s["layers_1"]["W"] == {"P": (8, 3), "Q": (3, 3 * 8), "log_alpha": (3,)}  # k = 3
    for layer in ("layers_0", "layers_1"):
        assert {k: v for k, v in s[layer].items() if k != "W"} == {n: (8,) for n in ("v_f", "v_r", "b_f", "b_r")}
    chex.assert_trees_all_equal(params["layers_1"]["b_r"], jnp.full((8,), -3.0))
    chex.assert_trees_all_equal(params["layers_1"]["b_f"], jnp.zeros(8))
    assert s["output"] == {"kernel": (8, 11), "bias": (11,)}


@pytest.mark.parametrize(
    "changes, layer0_w",
    [
        (dict(input_gated_first=False), {"P": (5, 3), "Q": (3, 32), "log_alpha": (3,)}),
        (dict(gated=False), {"kernel": (5, 32)}),
        (dict(gated=False, input_gated_first=False), {"P": (5, 3), "Q": (3, 32)}),
        (dict(embed_dim=None, rank=None, dtype=jnp.bfloat16), {"kernel": (8, 24), "log_alpha": (8,)}),
    ],
)
def test_variants(changes, layer0_w):
    cfg = dataclasses.replace(TINY, **changes)
    abstract = abstract_params(cfg)
    assert shapes(abstract)["layers_0"]["W"] == layer0_w
    assert ("log_alpha" in abstract["layers_1"]["W"]) == cfg.gated
    if cfg.rank is None:  # FactorizedDense's parameter-neutral default: 8 * 24 // 32
        assert shapes(abstract)["layers_1"]["W"]["P"] == (8, 6)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
    logits, carry = eval_fn(cfg)(numpy_params(cfg), TOKENS, SRULanguageModel(cfg).initial_carry(BATCH))
    chex.assert_shape(logits, (BATCH, TIME, 11))
    chex.assert_type([logits, carry["c"]], jnp.float32)
    chex.assert_tree_all_finite(logits)


def test_paper_config_builds_abstractly():
    cfg = SRUConfig(vocab_size=205)  # FLOP enwik8: d 3056, 6 layers, rank 512, embed 205
    model = SRULanguageModel(cfg)
    tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    variables = jax.eval_shape(lambda k, t: model.init(k, t, model.initial_carry(2)), jax.random.key(0), tokens)
    params = variables["params"]
    v, d, e, r = 205, 3056, 205, 512
    first = e * 4 * d + e  # input-gated W and its gates
    other = d * r + r * 3 * d + r  # P, Q, log_alpha
    expected = v * e + first + 5 * other + 6 * 4 * d + d * v + v
    print(f"SRU enwik8 (FLOP) params: {fp.total_params(params):,}")
    assert fp.total_params(params) == expected
    assert fp.prunable_params(params) == e * 4 * d + 5 * r * (d + 3 * d)
    out = jax.eval_shape(lambda p, t: model.apply({"params": p}, t, model.initial_carry(2)), params, tokens)
    chex.assert_shape(out[0], (2, 16, 205))
    chex.assert_shape(out[1]["c"], (2, 6, 3056))


# --- the recurrence against a step-by-step reference -----------------------


def reference_layer(u, x_highway, c, v_f, v_r, b_f, b_r):
    """numpy, one time step at a time; u: [batch, time, >=3, d]."""
    hs = []
    for t in range(u.shape[1]):
        f = 1 / (1 + np.exp(-(u[:, t, 1] + b_f + v_f * c)))
        r = 1 / (1 + np.exp(-(u[:, t, 2] + b_r + v_r * c)))
        c = u[:, t, 0] + (c - u[:, t, 0]) * f
        hs.append(x_highway[:, t] + (c - x_highway[:, t]) * r)
    return np.stack(hs, axis=1), c


def reference_model(params, tokens, c0, cfg):
    """The whole model in numpy float64, U from the params with the eval masks."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def mask(la):
        return np.asarray(deterministic_mask(jnp.asarray(la, jnp.float32)), np.float64)

    x = p["embed"]["embedding"][np.asarray(tokens)]
    states = []
    for layer in range(cfg.n_layers):
        lp, w = p[f"layers_{layer}"], p[f"layers_{layer}"]["W"]
        if "kernel" in w:
            u = (x * mask(w["log_alpha"]) if "log_alpha" in w else x) @ w["kernel"]
        else:
            h = x @ w["P"]
            u = (h * mask(w["log_alpha"]) if "log_alpha" in w else h) @ w["Q"]
        k = u.shape[-1] // cfg.d_model
        u = u.reshape(u.shape[:-1] + (k, cfg.d_model))
        x_highway = x if k == 3 else u[:, :, 3]
        c = np.asarray(c0[:, layer], np.float64)
        x, c = reference_layer(u, x_highway, c, lp["v_f"], lp["v_r"], lp["b_f"], lp["b_r"])
        states.append(c)
    return x @ p["output"]["kernel"] + p["output"]["bias"], np.stack(states, axis=1)


@pytest.mark.parametrize("changes", [{}, dict(scan_unroll=3, input_gated_first=False), dict(gated=False, embed_dim=8)])
def test_model_matches_step_by_step_reference(changes):
    cfg = dataclasses.replace(TINY, **changes)
    params = numpy_params(cfg)
    # Spread the gates so that the eval mask is not all ones.
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.linspace(-3.0, 3.0, a.size) if path[-1].key == "log_alpha" else a, params
    )
    carry = random_carry(cfg)
    logits, new_carry = eval_fn(cfg)(params, TOKENS, carry)
    want_logits, want_c = reference_model(params, TOKENS, np.asarray(carry["c"]), cfg)
    chex.assert_trees_all_close(logits, want_logits.astype(np.float32), atol=1e-5)
    chex.assert_trees_all_close(new_carry["c"], want_c.astype(np.float32), atol=1e-5)


def test_sru_recurrence_matches_reference():
    rng = np.random.default_rng(3)
    d = 4
    shapes_ = [(BATCH, TIME, 3, d), (BATCH, TIME, d), (BATCH, d)]
    u, xh, c0 = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes_)
    v_f, v_r, b_f, b_r = jnp.asarray(rng.normal(size=(4, d)), jnp.float32)
    h, c = jax.jit(sru_recurrence, static_argnames="unroll")(u, xh, c0, v_f, v_r, b_f, b_r, unroll=2)
    args = [np.asarray(a, np.float64) for a in (u, xh, c0, v_f, v_r, b_f, b_r)]
    want_h, want_c = reference_layer(*args)
    chex.assert_trees_all_close((h, c), (want_h.astype(np.float32), want_c.astype(np.float32)), atol=1e-5)


def step_by_step_recurrence(u, xh, c0, v_f, v_r, b_f, b_r):
    """SRU's recurrence with every gate inside the loop: the form ``sru_recurrence`` reorganises."""

    def step(c, inputs):
        u0, u1, u2, x = inputs
        f = jax.nn.sigmoid(u1 + b_f + v_f * c)
        r = jax.nn.sigmoid(u2 + b_r + v_r * c)
        c = u0 + (c - u0) * f
        return c, x + (c - x) * r

    xs = tuple(jnp.swapaxes(a, 0, 1) for a in (u[:, :, 0], u[:, :, 1], u[:, :, 2], xh))
    c_last, h = jax.lax.scan(step, c0, xs)
    return jnp.swapaxes(h, 0, 1), c_last


def recurrence_args(seed=4, d=5):
    rng = np.random.default_rng(seed)
    shapes_ = [(BATCH, TIME, 3, d), (BATCH, TIME, d), (BATCH, d)] + [(d,)] * 4
    return [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes_]


def test_sru_recurrence_is_the_step_by_step_form_bitwise():
    args = recurrence_args()
    chex.assert_trees_all_equal(jax.jit(sru_recurrence)(*args), jax.jit(step_by_step_recurrence)(*args))


@pytest.mark.parametrize("unroll", [1, 3])
def test_sru_recurrence_gradient_matches_autodiff_of_the_step_by_step_form(unroll):
    args = recurrence_args()
    weights = jnp.asarray(np.random.default_rng(5).normal(size=(BATCH, TIME, 5)), jnp.float32)

    def loss(fn):
        def value(*a):
            h, c_last = fn(*a)
            return (weights * h).sum() + (c_last**2).sum()

        return jax.jit(jax.grad(value, argnums=tuple(range(len(args)))))

    got = loss(lambda *a: sru_recurrence(*a, unroll=unroll))(*args)
    want = loss(step_by_step_recurrence)(*args)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


def test_forget_scan_gradient_is_numerically_right():
    rng = np.random.default_rng(6)
    arrays = [rng.normal(size=shape) for shape in [(TIME, BATCH, 3), (TIME, BATCH, 3), (BATCH, 3), (3,)]]
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in arrays]
        jax.test_util.check_grads(lambda *a: forget_scan(*a), args, order=1, modes=["rev"], eps=1e-6)


# --- carry -------------------------------------------------------------------


def test_two_halves_with_carry_equal_the_whole():
    _, params = init()
    run = eval_fn(TINY)
    carry = random_carry()
    whole, whole_carry = run(params, TOKENS, carry)
    first, mid = run(params, TOKENS[:, :3], carry)
    second, end = run(params, TOKENS[:, 3:], mid)
    chex.assert_trees_all_close(jnp.concatenate([first, second], axis=1), whole, atol=1e-5)
    chex.assert_trees_all_close(end, whole_carry, atol=1e-5)


def test_initial_carry_on_unbound_module():
    carry = SRULanguageModel(TINY).initial_carry(3)
    chex.assert_trees_all_equal(carry, {"c": jnp.zeros((3, 2, 8), jnp.float32)})
    with pytest.raises(ValueError, match="batch_size=0"):
        SRULanguageModel(TINY).initial_carry(0)


def test_carry_mismatch_is_an_error():
    model, params = init()
    with pytest.raises(ValueError, match="carry"):
        model.apply({"params": params}, TOKENS, model.initial_carry(BATCH + 1))
    with pytest.raises(ValueError, match="carry"):
        model.apply({"params": params}, TOKENS, model.initial_carry(BATCH)["c"])


# --- training mode -------------------------------------------------------------


@functools.cache
def train_fn():
    """Jitted training-mode loss, gradients (params and carry) and outputs of the tiny model."""
    model = SRULanguageModel(TINY)

    def loss(params, carry, gates, dropout):
        logits, new = model.apply(
            {"params": params}, TOKENS, carry, deterministic=False, rngs={"gates": gates, "dropout": dropout}
        )
        return jnp.mean(logits**2) + jnp.mean(new["c"] ** 2), (logits, new)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def test_training_mode_needs_both_rngs_and_is_a_function_of_the_keys():
    model, params = init()
    carry = model.initial_carry(BATCH)

    def trace(**rngs):  # tracing raises the same errors as running, without compiling
        def apply(p):
            return model.apply({"params": p}, TOKENS, carry, deterministic=False, rngs=rngs)

        return jax.eval_shape(apply, params)

    with pytest.raises(ValueError, match="'gates'"):
        trace(dropout=rng_key(0))
    with pytest.raises(Exception, match='"dropout"'):
        trace(gates=rng_key(0))
    k1, k2 = rng_key(1), rng_key(2)
    (_, (logits, _)), _ = train_fn()(params, carry, k1, k2)
    chex.assert_trees_all_equal(train_fn()(params, carry, k1, k2), train_fn()(params, carry, k1, k2))
    assert not np.allclose(logits, train_fn()(params, carry, k2, k2)[0][1][0])  # other gate samples
    assert not np.allclose(logits, train_fn()(params, carry, k1, k1)[0][1][0])  # other dropout masks


def test_gradients_reach_gates_weights_and_the_carry():
    _, params = init()
    _, (g, g_carry) = train_fn()(params, random_carry(), rng_key(7), rng_key(8))
    for path in (
        "layers_0/W/log_alpha",
        "layers_0/W/kernel",
        "layers_1/W/log_alpha",
        "layers_1/W/P",
        "layers_1/W/Q",
        "layers_1/v_f",
        "layers_1/v_r",
        "layers_1/b_r",
        "embed/embedding",
    ):
        leaf = g
        for key in path.split("/"):
            leaf = leaf[key]
        assert np.any(np.asarray(leaf) != 0), path
    assert np.any(np.asarray(g_carry["c"]) != 0)  # the model does not stop gradients through the carry


# --- surgery ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, cut",
    [
        ({}, {"layers_0": [1, 3], "layers_1": [2]}),
        ({}, {"layers_0": [0, 1, 2, 3, 4], "layers_1": [0, 1, 2]}),  # both layers' W cut to nothing
        (dict(input_gated_first=False, n_layers=3), {"layers_0": [0], "layers_2": [1]}),
    ],
)
def test_shrunk_model_equals_gated_model(changes, cut):
    cfg = dataclasses.replace(TINY, **changes)
    params = init()[1] if cfg == TINY else numpy_params(cfg)
    for layer, idx in cut.items():
        w = params[layer]["W"]
        w = {**w, "log_alpha": w["log_alpha"].at[jnp.array(idx)].set(-10.0)}
        params = {**params, layer: {**params[layer], "W": w}}
    small, small_cfg = fp.shrink(params, cfg)
    assert dataclasses.replace(small_cfg, plan=cfg.plan) == cfg
    for layer, idx in cut.items():  # the eval mask drops exactly the components set to -10
        spec = small_cfg.plan.spec(f"{layer}/W")
        kept = len(spec.keep) if isinstance(spec, fp.InputGatedSpec) else spec.rank
        assert kept == params[layer]["W"]["log_alpha"].size - len(idx), (layer, spec)
        assert ("W" in small[layer]) == (kept > 0)  # no bias: a layer that keeps nothing has no params
    assert fp.total_params(small) < fp.total_params(params)
    assert not any(path[-1].key == "log_alpha" for path, _ in jax.tree_util.tree_leaves_with_path(small))
    carry = random_carry(cfg)
    want = eval_fn(cfg)(params, TOKENS, carry)
    got = eval_fn(small_cfg)(small, TOKENS, carry)
    chex.assert_trees_all_close(got, want, atol=1e-5)


# --- config errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("d_model", 0),
        ("d_model", 8.0),
        ("n_layers", 0),
        ("embed_dim", 0),
        ("rank", 0),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("highway_bias", math.nan),
        ("gated", 1),
        ("input_gated_first", None),
        ("scan_unroll", 0),
        ("plan", None),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        dataclasses.replace(TINY, **{field: value})


@pytest.mark.parametrize(
    "fields,top",
    [
        (dict(d_model=32, n_layers=2, rank=1000), 32),  # layers 1..: W [32, 96]
        (dict(d_model=8, n_layers=2, rank=9), 8),
        (dict(vocab_size=11, d_model=8, embed_dim=5, input_gated_first=False, rank=6), 5),  # layer 0: W [5, 32]
    ],
)
def test_a_rank_above_min_in_out_of_the_factorized_w_is_refused(fields, top):
    with pytest.raises(ValueError, match=rf"SRUConfig: rank={fields['rank']} must be None .* integer in \[1, {top}\]"):
        SRUConfig(**fields)
    assert SRUConfig(**{**fields, "rank": top}).rank == top  # the largest accepted rank


def test_a_rank_at_the_limit_builds_p_and_q_of_that_rank():
    model = SRULanguageModel(SRUConfig(vocab_size=11, d_model=8, n_layers=2, rank=8))
    params = jax.eval_shape(model.init, jax.random.key(0), TOKENS, model.initial_carry(BATCH))["params"]
    assert params["layers_1"]["W"]["P"].shape == (8, 8)


def test_rank_is_unchecked_where_nothing_is_factorized():
    assert SRUConfig(d_model=8, n_layers=1, rank=100).max_rank is None  # one input-gated layer: rank unused
