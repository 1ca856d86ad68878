"""FactorizedDense and InputGatedDense: shapes, math, modes and errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.gates import deterministic_mask

X = jax.random.normal(jax.random.key(42), (3, 5, 6))


def test_default_rank_is_parameter_neutral():
    assert fp.default_rank(6, 4) == 2  # 24 // 10
    assert fp.default_rank(512, 512) == 256
    layer = fp.FactorizedDense(4)
    params = layer.init(jax.random.key(0), X, deterministic=True)["params"]
    chex.assert_shape([params["P"], params["Q"], params["log_alpha"], params["bias"]], [(6, 2), (2, 4), (2,), (4,)])
    assert 2 * (6 + 4) <= 6 * 4


def test_factorized_eval_output_matches_formula():
    layer = fp.FactorizedDense(4, rank=3)
    params = layer.init(jax.random.key(0), X, deterministic=True)["params"]
    params = {**params, "log_alpha": jnp.array([2.0, -3.0, 0.5]), "bias": jnp.arange(4.0)}
    y = jax.jit(lambda p, x: layer.apply({"params": p}, x, deterministic=True))(params, X)
    z = deterministic_mask(params["log_alpha"])
    expected = ((np.asarray(X) @ params["P"]) * z) @ params["Q"] + params["bias"]
    chex.assert_trees_all_close(y, expected, atol=1e-5)


def test_training_mode_uses_explicit_gate_key():
    layer = fp.FactorizedDense(4, rank=3)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    run = jax.jit(lambda k: layer.apply(variables, X, deterministic=False, rngs={"gates": k}))
    chex.assert_trees_all_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
    with pytest.raises(ValueError, match="rng stream named 'gates'"):
        layer.apply(variables, X, deterministic=False)


def test_per_example_gates_differ_across_batch():
    layer = fp.FactorizedDense(4, rank=4, per_example_gates=True)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    y = layer.apply(variables, jnp.broadcast_to(X[:1], X.shape), deterministic=False, rngs={"gates": jax.random.key(3)})
    assert not np.allclose(y[0], y[1])
    shared = fp.FactorizedDense(4, rank=4)
    same = jnp.broadcast_to(X[:1], X.shape)
    y = shared.apply(variables, same, deterministic=False, rngs={"gates": jax.random.key(3)})
    chex.assert_trees_all_close(y[0], y[1])


def test_ungated_is_plain_low_rank():
    layer = fp.FactorizedDense(4, rank=2, gated=False, use_bias=False)
    params = layer.init(jax.random.key(0), X)["params"]
    assert set(params) == {"P", "Q"}
    chex.assert_trees_all_close(layer.apply({"params": params}, X), X @ params["P"] @ params["Q"], atol=1e-5)


def test_dtype_and_param_dtype():
    layer = fp.FactorizedDense(4, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    assert variables["params"]["P"].dtype == jnp.float32
    assert variables["params"]["log_alpha"].dtype == jnp.float32
    y = layer.apply(variables, X, deterministic=False, rngs={"gates": jax.random.key(0)})
    assert y.dtype == jnp.bfloat16


def test_plan_spec_overrides_defaults():
    plan = fp.Plan().with_specs({"": fp.FactorizedSpec(rank=1)})
    params = fp.FactorizedDense(4, plan=plan).init(jax.random.key(0), X)["params"]
    chex.assert_shape(params["P"], (6, 1))
    assert "log_alpha" not in params
    merged = fp.Plan().with_specs({"": fp.FactorizedSpec(rank=3, merged=True)})
    assert set(fp.FactorizedDense(4, plan=merged).init(jax.random.key(0), X)["params"]) == {"kernel", "bias"}
    empty = fp.Plan().with_specs({"": fp.FactorizedSpec(rank=0)})
    layer = fp.FactorizedDense(4, plan=empty, bias_init=jax.nn.initializers.ones)
    variables = layer.init(jax.random.key(0), X)
    chex.assert_trees_all_close(layer.apply(variables, X), jnp.ones((3, 5, 4)))


def test_bad_rank_and_bad_spec():
    with pytest.raises(ValueError, match="rank=0"):
        fp.FactorizedDense(4, rank=0).init(jax.random.key(0), X)
    plan = fp.Plan().with_specs({"": fp.InputGatedSpec()})
    with pytest.raises(ValueError, match="expected a FactorizedSpec"):
        fp.FactorizedDense(4, plan=plan).init(jax.random.key(0), X)
    with pytest.raises(ValueError, match="rank=-1"):
        fp.FactorizedSpec(rank=-1)


def test_input_gated_eval_output_and_cost():
    layer = fp.InputGatedDense(3)
    params = layer.init(jax.random.key(0), X, deterministic=True)["params"]
    chex.assert_shape([params["kernel"], params["log_alpha"]], [(6, 3), (6,)])
    la = jnp.array([4.0, -4.0, 1.0, 4.0, -4.0, 0.0])
    params = {**params, "log_alpha": la}
    y = layer.apply({"params": params}, X, deterministic=True)
    expected = (np.asarray(X) * deterministic_mask(la)) @ params["kernel"] + params["bias"]
    chex.assert_trees_all_close(y, expected, atol=1e-5)
    (path, group), = fp.gate_groups({"layer": params})
    assert path == "layer" and group.cost_per_gate == 3


def test_input_gated_training_needs_gates_rng():
    layer = fp.InputGatedDense(3, per_example_gates=True)
    variables = layer.init(jax.random.key(0), X, deterministic=True)
    y = layer.apply(variables, X, deterministic=False, rngs={"gates": jax.random.key(0)})
    chex.assert_shape(y, (3, 5, 3))
    with pytest.raises(ValueError, match="gates"):
        layer.apply(variables, X, deterministic=False)


def test_input_gated_plan_gathers_kept_inputs():
    plan = fp.Plan().with_specs({"": fp.InputGatedSpec(keep=(1, 4))})
    layer = fp.InputGatedDense(3, plan=plan)
    params = layer.init(jax.random.key(0), X)["params"]
    chex.assert_shape(params["kernel"], (2, 3))
    y = layer.apply({"params": params}, X)
    chex.assert_trees_all_close(y, np.asarray(X)[..., [1, 4]] @ params["kernel"] + params["bias"], atol=1e-5)
    with pytest.raises(ValueError, match="sorted"):
        fp.InputGatedSpec(keep=(3, 1))
    bad = fp.Plan().with_specs({"": fp.InputGatedSpec(keep=(1, 9))})
    with pytest.raises(ValueError, match="keeps input 9"):
        fp.InputGatedDense(3, plan=bad).init(jax.random.key(0), X)


# --- Bad sizes are named (issue 11) ----------------------------------------------------------


@pytest.mark.parametrize("features", [0, -4, 2.5, True])
def test_features_must_be_a_positive_int(features):
    x = jnp.ones((2, 16))
    for layer in (fp.FactorizedDense(features), fp.InputGatedDense(features)):
        match = rf"{type(layer).__name__} at '': features={features!r} must be an int >= 1"
        with pytest.raises(ValueError, match=match):
            layer.init(jax.random.key(0), x, deterministic=True)


@pytest.mark.parametrize("rank", [500, 9, 0, -1, 2.0])
def test_rank_must_fit_the_matrix(rank):
    x = jnp.ones((2, 16))  # 16 -> 8: at most min(16, 8) = 8 components
    match = rf"FactorizedDense at '': rank={rank!r} must be an int in \[1, min\(in, out\)\] = \[1, 8\]"
    with pytest.raises(ValueError, match=match):
        fp.FactorizedDense(8, rank=rank).init(jax.random.key(0), x, deterministic=True)
    full = fp.FactorizedDense(8, rank=8).init(jax.random.key(0), x, deterministic=True)["params"]
    assert full["P"].shape == (16, 8)
    plan = fp.Plan().with_specs({"": fp.FactorizedSpec(rank=9)})
    with pytest.raises(ValueError, match=r"the plan's FactorizedSpec\(rank=9.*min\(in, out\) = 8"):
        fp.FactorizedDense(8, plan=plan).init(jax.random.key(0), x, deterministic=True)


def test_default_rank_needs_positive_sizes():
    assert fp.default_rank(1, 1) == 1 and fp.default_rank(16, 8) == 5 <= min(16, 8)
    for bad in ((0, 4), (4, -1), (4.5, 4)):
        with pytest.raises(ValueError, match=r"default_rank: \(in_features, out_features\)=.* must be ints >= 1"):
            fp.default_rank(*bad)
