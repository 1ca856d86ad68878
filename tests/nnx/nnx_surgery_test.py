"""``flaxprune.nnx.shrink``: the reduced model equals the gated one in eval mode, and Linen's shrink."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxprune as fp
from flaxprune import nnx as fpx
from nnx_models import IDS, X, AdaptiveLM, LinenMLP, MLP, linen_twin_params, materialize, spread_gates


@pytest.fixture(scope="module")
def gated():
    model = spread_gates(materialize(lambda: MLP(nnx.Rngs(params=0, gates=1, dropout=2))))
    model.fc1.log_alpha[...] = jnp.full((8,), 4.0)  # every component kept: 8 (8 + 8) >= 8 * 8, so merged
    model.eval()
    return model


@pytest.fixture(scope="module")
def small(gated):
    return fpx.shrink(gated)


def test_shrunk_equals_gated_in_eval_mode(gated, small):
    np.testing.assert_allclose(small(X), gated(X), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(small, X), gated(X), atol=1e-5, rtol=1e-5)
    assert fpx.total_params(small) < fpx.total_params(gated)
    assert isinstance(small, MLP) and small is not gated


def test_shrink_equals_the_linen_shrink(gated, small):
    params = linen_twin_params(gated)
    want_params, want_plan = fp.shrink(params, fpx.plan_of(gated))
    got = fpx.params_of(small)
    assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, want_params)
    assert fpx.plan_of(small) == want_plan
    linen_out = LinenMLP(want_plan).apply({"params": want_params}, X)
    np.testing.assert_allclose(small(X), linen_out, atol=1e-5, rtol=1e-5)
    # Linen's own plan (no specs before surgery) gives the same cut.
    linen_params_out, linen_plan = fp.shrink(params, LinenMLP().plan)
    for path, spec in linen_plan.layers:
        assert fpx.plan_of(small).spec(path) == spec
    assert jax.tree.map(jnp.shape, linen_params_out) == jax.tree.map(jnp.shape, got)


def model_rank(n_in, n_out):
    return fp.default_rank(n_in, n_out)


def test_the_layers_take_the_new_structure(small):
    assert small.fc1.spec == fp.FactorizedSpec(rank=8, merged=True)
    assert sorted(fpx.params_of(small)["fc1"]) == ["bias", "kernel"]
    assert small.fc0.spec.keep is not None and not small.fc0.spec.gated
    assert small.out.rngs is None and small.out.spec.rank < model_rank(8, 5)


def test_shrink_leaves_its_input_alone():
    model = spread_gates(materialize(lambda: MLP(nnx.Rngs(params=0, gates=1, dropout=2))))
    before = jax.tree.map(np.asarray, fpx.params_of(model))
    plan = fpx.plan_of(model)
    fpx.shrink(model)
    assert fpx.plan_of(model) == plan
    jax.tree.map(np.testing.assert_array_equal, fpx.params_of(model), before)


def test_shrinking_a_shrunk_model_changes_nothing(small):
    again = fpx.shrink(small)  # no gates left: every layer keeps its spec and params
    assert fpx.plan_of(again) == fpx.plan_of(small)
    np.testing.assert_allclose(again(X), small(X), atol=1e-6)


def test_a_tied_adaptive_model_shrinks_to_its_eval_outputs():
    model = spread_gates(materialize(lambda: AdaptiveLM(nnx.Rngs(params=0, gates=1))))
    model.eval()
    small = fpx.shrink(model)
    np.testing.assert_allclose(small(IDS), model(IDS), atol=1e-5, rtol=1e-5)
    dims = small.embed.spec.dims
    assert sum(dims) < sum(d for _, _, d in model.embed.clusters) and not small.embed.spec.gated
    assert fpx.plan_of(small).spec("softmax") is None  # tied: the embedding's structure


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match=r"^shrink: model=dict must be an nnx.Module\.$"):
        fpx.shrink({"fc": {}})
    model = nnx.eval_shape(lambda: MLP(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="restructure got params") as info:
        model.fc1.restructure(fp.FactorizedSpec(rank=2), {"P": jnp.zeros((8, 3)), "Q": jnp.zeros((3, 8))})
    assert "\n" not in str(info.value)
