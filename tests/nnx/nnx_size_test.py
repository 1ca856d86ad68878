"""Size accounting of an NNX model agrees with flaxprune.size on the Linen twin's params."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxprune as fp
from flaxprune import nnx as fpx
from nnx_models import MLP, linen_twin_params, materialize, spread_gates


@pytest.fixture(scope="module")
def model():
    return spread_gates(materialize(lambda: MLP(nnx.Rngs(params=0, gates=1, dropout=2))))


def test_params_of_a_model_a_state_and_a_split_are_the_linen_tree(model):
    params = linen_twin_params(model)
    graphdef, state = nnx.split(model)  # the whole state: rng streams too, which are no params
    assert sorted(params) == ["fc0", "fc1", "norm", "out"]
    assert sorted(params["fc1"]) == ["P", "Q", "bias", "log_alpha"]
    for source in (state, nnx.state(model, nnx.Param), nnx.to_pure_dict(nnx.state(model, nnx.Param))):
        assert jnp.asarray(fpx.params_of(source)["fc1"]["P"]).shape == (8, 8)
        assert set(fpx.params_of(source)) == set(params)


@pytest.mark.parametrize("basis", ["factors", "dense"])
def test_size_functions_agree_with_linen(model, basis):
    params, plan = linen_twin_params(model), fpx.plan_of(model)
    assert fpx.prunable_params(model, basis) == fp.prunable_params(params, basis)
    np.testing.assert_allclose(fpx.expected_sparsity(model, basis=basis), fp.expected_sparsity(params, plan, basis))
    np.testing.assert_allclose(fpx.hard_sparsity(model, basis=basis), fp.hard_sparsity(params, plan, basis))
    assert int(fpx.hard_params(model, basis=basis)) == int(fp.hard_params(params, plan, basis))
    state = nnx.state(model, nnx.Param)
    np.testing.assert_allclose(fpx.expected_sparsity(state, plan, basis), fp.expected_sparsity(params, plan, basis))
    assert 0.0 < float(fpx.hard_sparsity(model, basis=basis)) < 1.0  # the spread gates keep some, cut some


def test_report_and_total_params(model):
    params = linen_twin_params(model)
    assert fpx.report(model) == fp.report(params, fpx.plan_of(model))
    assert fpx.total_params(model) == fp.total_params(params)
    assert fpx.expected_params(model) == pytest.approx(float(fp.expected_params(params, fpx.plan_of(model))))


def test_plan_of_holds_each_layer_spec_under_its_path(model):
    plan = fpx.plan_of(model)
    assert plan.gate == fp.GateConfig()
    assert plan.spec("fc1") == fp.FactorizedSpec(rank=8, gated=True)
    assert plan.spec("fc0") == fp.InputGatedSpec(keep=None, gated=True)
    assert plan.spec("norm") is None


def test_paths_through_an_nnx_list_are_plan_paths():
    class Stack(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([fpx.FactorizedDense(4, 4, rngs=rngs) for _ in range(2)])

    stack = nnx.eval_shape(lambda: Stack(nnx.Rngs(0)))
    assert [p for p, _ in fpx.layers_of(stack)] == ["layers/0", "layers/1"]
    assert set(fpx.params_of(stack)["layers"]) == {"0", "1"}
    assert fpx.prunable_params(stack) == 2 * 2 * 8


def one_line_error(fn, *words):
    with pytest.raises(ValueError) as info:
        fn()
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_bad_input_is_one_line_naming_the_parameter(model):
    params = fpx.params_of(model)
    one_line_error(lambda: fpx.expected_sparsity(params), "gate=None", "plan_of(model)")
    one_line_error(lambda: fpx.hard_sparsity(model, fp.GateConfig(eval_mask="clip")), "gate=", "disagrees")
    one_line_error(lambda: fpx.prunable_params([1, 2]), "list")
    one_line_error(lambda: fpx.plan_of(nnx.Linear(2, 2, rngs=nnx.Rngs(0))), "no flaxprune.nnx layer")

    class Mixed(nnx.Module):
        def __init__(self, rngs):
            self.a = fpx.FactorizedDense(4, 4, rngs=rngs)
            self.b = fpx.FactorizedDense(4, 4, gate=fp.GateConfig(eval_mask="clip"), rngs=rngs)

    one_line_error(lambda: fpx.gate_of(nnx.eval_shape(lambda: Mixed(nnx.Rngs(0)))), "'a' and 'b'", "gate=")
