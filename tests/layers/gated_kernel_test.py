"""WeightGatedDense and BlockGatedDense: shapes, eval math, modes, block errors, surgery, counts and layouts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune import param_tree, size, surgery
from flaxprune.gates import deterministic_mask
from flaxprune.layers import BLOCK_GATED_LAYOUT, LAYOUTS, WEIGHT_GATED_LAYOUT, BlockGatedDense, WeightGatedDense
from flaxprune.layers.gated_kernel import MaskedDenseSpec, check_block, expand_blocks, flat_mask

X = jax.random.normal(jax.random.key(42), (5, 8))  # [batch, in=8]
OPEN, SHUT = 20.0, -20.0


class One(nn.Module):
    """A gated layer as the submodule 'W', so that params are {'W': node}, as shrink and the counts expect."""

    kind: type
    features: int
    plan: fp.Plan = fp.Plan()
    block: tuple | None = None

    @nn.compact
    def __call__(self, x, deterministic=True):
        extra = {} if self.block is None else {"block": self.block}
        return self.kind(self.features, plan=self.plan, name="W", **extra)(x, deterministic)


def _init(kind, features=12, block=None, x=X):
    module = One(kind, features, block=block)
    return module, module.init(jax.random.key(0), x)["params"]


def _shut_pattern(shape, shut):
    """log_alpha of ``shape`` with the flat indices in ``shut`` at -20 and the rest at +20."""
    la = np.full(int(np.prod(shape)), OPEN, np.float32)
    la[list(shut)] = SHUT
    return jnp.asarray(la.reshape(shape))


def _soft(la):
    """FLOP's eval mask by hand where every gate is clearly open or shut: sigmoid(0.8 la), 0 where shut."""
    la = np.asarray(la, np.float64)
    return np.where(la < 0, 0.0, 1.0 / (1.0 + np.exp(-0.8 * la)))


# --- params and eval math -------------------------------------------------------------------------------------


def test_weight_gated_params_have_a_gate_per_weight():
    _, params = _init(WeightGatedDense)
    assert set(params["W"]) == {"kernel", "bias", "log_alpha_weight"}
    assert params["W"]["kernel"].shape == (8, 12)
    assert params["W"]["bias"].shape == (12,)
    assert params["W"]["log_alpha_weight"].shape == (8, 12)
    assert params["W"]["log_alpha_weight"].dtype == jnp.float32


def test_block_gated_params_have_a_gate_per_block():
    _, params = _init(BlockGatedDense, block=(2, 4))
    assert set(params["W"]) == {"kernel", "bias", "log_alpha_block"}
    assert params["W"]["kernel"].shape == (8, 12)
    assert params["W"]["log_alpha_block"].shape == (4, 3)  # 8 / 2, 12 / 4
    assert BlockGatedDense(12).block == (16, 16)


def test_ungated_weight_and_block_layers_hold_only_kernel_and_bias():
    for kind in (WeightGatedDense, BlockGatedDense):
        layer = kind(12, gated=False, block=(4, 4)) if kind is BlockGatedDense else kind(12, gated=False)
        params = layer.init(jax.random.key(0), X)["params"]
        assert set(params) == {"kernel", "bias"}
        np.testing.assert_allclose(
            layer.apply({"params": params}, X), np.asarray(X) @ params["kernel"] + params["bias"], atol=1e-5
        )


def test_weight_gated_eval_output_is_x_times_masked_kernel_plus_bias():
    module, params = _init(WeightGatedDense)
    shut = [0, 5, 13, 40, 41, 95]
    la = _shut_pattern((8, 12), shut)
    node = {**params["W"], "log_alpha_weight": la, "bias": jnp.arange(12.0)}
    y = jax.jit(lambda p: module.apply({"params": p}, X, deterministic=True))({"W": node})
    mask = _soft(la)
    assert np.count_nonzero(mask) == 96 - len(shut)
    expected = np.asarray(X, np.float64) @ (np.asarray(node["kernel"], np.float64) * mask) + np.arange(12.0)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_weight_gated_eval_mask_is_flops_mask_over_the_flattened_gates():
    module, params = _init(WeightGatedDense)
    la = jax.random.normal(jax.random.key(7), (8, 12)) * 2.0  # no clear open / shut: the rank rule decides
    node = {**params["W"], "log_alpha_weight": la}
    y = module.apply({"params": {"W": node}}, X, deterministic=True)
    mask = np.asarray(deterministic_mask(la.reshape(-1))).reshape(8, 12)
    expected = np.asarray(X) @ (np.asarray(node["kernel"]) * mask) + np.asarray(node["bias"])
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_array_equal(flat_mask(la, fp.GateConfig()), mask)


def test_block_gated_eval_output_expands_each_block_gate_over_its_weights():
    module, params = _init(BlockGatedDense, block=(2, 4))
    la = _shut_pattern((4, 3), [1, 6, 11])  # blocks (0, 1), (2, 0), (3, 2) shut
    node = {**params["W"], "log_alpha_block": la, "bias": jnp.ones(12)}
    y = module.apply({"params": {"W": node}}, X, deterministic=True)
    z = _soft(la)
    weight_mask = np.kron(z, np.ones((2, 4)))  # each block gate over its 2 x 4 weights
    assert weight_mask.shape == (8, 12)
    assert weight_mask[0:2, 4:8].max() == 0 and weight_mask[4:6, 0:4].max() == 0 and weight_mask[6:8, 8:12].max() == 0
    assert np.count_nonzero(weight_mask) == 96 - 3 * 8
    expected = np.asarray(X, np.float64) @ (np.asarray(node["kernel"], np.float64) * weight_mask) + 1.0
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_expand_blocks_repeats_each_value_over_its_block():
    z = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = np.asarray(expand_blocks(z, (2, 3)))
    assert got.shape == (4, 9)
    np.testing.assert_array_equal(got[:2, :3], np.ones((2, 3)))
    np.testing.assert_array_equal(got[2:, 6:], np.full((2, 3), 6.0))
    np.testing.assert_array_equal(got[3, :], [4, 4, 4, 5, 5, 5, 6, 6, 6])


def test_flat_mask_zeroes_round_n_minus_expected_l0_lowest_first_on_ties():
    # log_alpha = 0: P(z != 0) = sigmoid(log 11) = 11/12, so round(24 - 22) = 2 zeros; ties go lowest index first.
    mask = np.asarray(flat_mask(jnp.zeros((4, 6)), fp.GateConfig()))
    assert mask.shape == (4, 6)
    zeros = np.argwhere(mask == 0).tolist()
    assert zeros == [[0, 0], [0, 1]]
    np.testing.assert_allclose(mask[mask != 0], 0.5)  # sigmoid(0)


# --- training mode --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,block", [(WeightGatedDense, None), (BlockGatedDense, (4, 4))])
def test_training_mode_needs_the_gates_rng_and_draws_from_it(kind, block):
    module, params = _init(kind, block=block)
    with pytest.raises(ValueError, match="'gates'"):
        module.apply({"params": params}, X, deterministic=False)
    run = jax.jit(lambda k: module.apply({"params": params}, X, deterministic=False, rngs={"gates": k}))
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
    assert not np.allclose(run(jax.random.key(1)), module.apply({"params": params}, X, deterministic=True))


# --- the block shape --------------------------------------------------------------------------------------------


def test_a_block_that_does_not_divide_the_inputs_names_the_layer_and_the_side():
    with pytest.raises(ValueError) as err:
        One(BlockGatedDense, 16, block=(8, 8)).init(jax.random.key(0), jnp.ones((2, 12)))
    msg = str(err.value)
    assert "BlockGatedDense at 'W'" in msg
    assert "in=12 is not a multiple of 8" in msg
    assert "[12, 16]" in msg


def test_a_block_that_does_not_divide_the_outputs_names_the_out_side():
    with pytest.raises(ValueError, match=r"BlockGatedDense at 'W'.*out=12 is not a multiple of 8 \(12 % 8 = 4\)"):
        One(BlockGatedDense, 12, block=(4, 8)).init(jax.random.key(0), X)


def test_check_block_accepts_divisors_and_refuses_bad_shapes():
    assert check_block("here", (4, 3), (8, 12)) == (4, 3)
    assert check_block("here", [8, 12], (8, 12)) == (8, 12)
    for bad in [(0, 4), (4,), (4, 4, 4), 4, (2.0, 4), (True, 4)]:
        with pytest.raises(ValueError, match="here: block=.*must be two ints >= 1"):
            check_block("here", bad, (8, 12))
    with pytest.raises(ValueError, match="here: .*in=8 is not a multiple of 3"):
        check_block("here", (3, 4), (8, 12))


# --- surgery ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,block,gate_key,gate_shape,shut",
    [
        (WeightGatedDense, None, "log_alpha_weight", (8, 12), [0, 1, 2, 17, 50, 77, 95]),
        (BlockGatedDense, (4, 4), "log_alpha_block", (2, 3), [1, 3]),  # blocks (0, 1) and (1, 0)
    ],
)
def test_shrink_folds_the_mask_into_a_plain_kernel_that_gives_the_gated_outputs(kind, block, gate_key, gate_shape,
                                                                                shut):
    module, params = _init(kind, block=block)
    la = _shut_pattern(gate_shape, shut)
    params = {"W": {**params["W"], gate_key: la}}
    small, plan = surgery.shrink(params, fp.Plan())
    assert set(small["W"]) == {"kernel", "bias"}
    assert plan.spec("W") == MaskedDenseSpec(gated=False)
    mask = _soft(la) if block is None else np.kron(_soft(la), np.ones(block))
    kernel = np.asarray(small["W"]["kernel"])
    assert kernel.shape == (8, 12)
    np.testing.assert_array_equal(kernel[mask == 0], 0.0)  # exact zeros where the gates are shut
    assert np.count_nonzero(kernel) == 96 - (len(shut) if block is None else len(shut) * 16)
    np.testing.assert_allclose(kernel, np.asarray(params["W"]["kernel"], np.float64) * mask, rtol=1e-6)
    np.testing.assert_array_equal(small["W"]["bias"], params["W"]["bias"])
    reduced = One(kind, 12, plan=plan, block=block)
    assert set(reduced.init(jax.random.key(5), X)["params"]["W"]) == {"kernel", "bias"}
    y_gated = module.apply({"params": params}, X, deterministic=True)
    y_small = reduced.apply({"params": small}, X)
    np.testing.assert_allclose(y_small, y_gated, atol=1e-5)
    # the export is a dense node now: a second shrink leaves it alone
    again, plan2 = surgery.shrink(small, plan)
    np.testing.assert_array_equal(again["W"]["kernel"], small["W"]["kernel"])
    assert plan2 == plan


def test_shrink_refuses_gated_params_with_an_ungated_plan():
    _, params = _init(WeightGatedDense)
    plan = fp.Plan().with_specs({"W": MaskedDenseSpec(gated=False)})
    with pytest.raises(ValueError, match="at 'W': gated"):
        surgery.shrink(params, plan)


def test_a_plan_with_another_spec_is_refused_by_the_module():
    plan = fp.Plan().with_specs({"W": fp.FactorizedSpec(rank=2)})
    with pytest.raises(ValueError, match="WeightGatedDense at 'W'.*expected a MaskedDenseSpec"):
        One(WeightGatedDense, 12, plan=plan).init(jax.random.key(0), X)


# --- counts ----------------------------------------------------------------------------------------------------


def test_weight_gated_counts_one_weight_per_gate():
    _, params = _init(WeightGatedDense)
    shut = list(range(0, 96, 4))  # 24 shut, 72 open
    params = {"W": {**params["W"], "log_alpha_weight": _shut_pattern((8, 12), shut)}}
    assert size.prunable_params(params) == 96
    assert size.prunable_params(params, "dense") == 96
    assert int(size.hard_params(params, fp.Plan())) == 72
    np.testing.assert_allclose(float(size.expected_params(params, fp.Plan())), 72.0, atol=1e-3)
    np.testing.assert_allclose(float(size.hard_sparsity(params, fp.Plan())), 0.25, atol=1e-7)
    np.testing.assert_allclose(float(size.expected_sparsity(params, fp.Plan())), 0.25, atol=1e-5)
    (path, group), = size.gate_groups(params)
    assert path == "W" and group.cost_per_gate == 1 and group.log_alpha.shape == (96,)


def test_block_gated_counts_b_in_times_b_out_weights_per_gate():
    _, params = _init(BlockGatedDense, block=(2, 4))
    params = {"W": {**params["W"], "log_alpha_block": _shut_pattern((4, 3), [0, 4, 5, 9, 10])}}  # 5 of 12 shut
    assert size.prunable_params(params) == 12 * 8
    assert int(size.hard_params(params, fp.Plan())) == 7 * 8
    np.testing.assert_allclose(float(size.expected_params(params, fp.Plan())), 56.0, atol=1e-3)
    np.testing.assert_allclose(float(size.hard_sparsity(params, fp.Plan())), 40 / 96, atol=1e-6)
    (_, group), = size.gate_groups(params)
    assert group.cost_per_gate == 8 and group.log_alpha.shape == (12,)


@pytest.mark.parametrize("kind,block,gate_key,n_gates,cost", [
    (WeightGatedDense, None, "log_alpha_weight", 96, 1),
    (BlockGatedDense, (4, 2), "log_alpha_block", 12, 8),
])
def test_expected_params_at_log_alpha_zero_is_eleven_twelfths_of_the_weights(kind, block, gate_key, n_gates, cost):
    _, params = _init(kind, block=block)
    params = {"W": {**params["W"], gate_key: jnp.zeros_like(params["W"][gate_key])}}
    # P(z != 0) = sigmoid(0 - log(0.1 / 1.1)) = 11 / 12 for every gate
    np.testing.assert_allclose(float(size.expected_params(params, fp.Plan())), 96 * 11 / 12, rtol=1e-6)
    # the eval mask shuts round(n / 12) gates (n - E[L0] = n / 12)
    shut = round(n_gates / 12)
    assert int(size.hard_params(params, fp.Plan())) == (n_gates - shut) * cost


def test_deterministic_mask_shuts_exactly_the_gates_set_to_minus_twenty():
    shut = [3, 7, 8, 30, 31, 63, 64, 90]
    la = _shut_pattern((8, 12), shut)
    mask = np.asarray(deterministic_mask(la.reshape(-1)))
    np.testing.assert_array_equal(np.flatnonzero(mask == 0), shut)


def test_report_rows_of_weight_and_block_gated_layers():
    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = WeightGatedDense(12, name="a")(x, True)
            return BlockGatedDense(8, block=(4, 4), name="b")(h, True)

    params = Two().init(jax.random.key(0), X)["params"]
    params = {
        "a": {**params["a"], "log_alpha_weight": _shut_pattern((8, 12), range(30))},  # 66 of 96 open
        "b": {**params["b"], "log_alpha_block": _shut_pattern((3, 2), [2])},  # 5 of 6 blocks of 16 open
    }
    rows = size.report(params, fp.Plan())
    a, b, other = rows
    assert (a.path, a.kind, a.shape, a.rank, a.full_rank, a.params, a.flops_per_token, a.gated) == (
        "a", "weight_gated", (8, 12), 66, 96, 66 + 12, 2 * 66, True)
    assert (b.path, b.kind, b.shape, b.rank, b.full_rank, b.params, b.flops_per_token, b.gated) == (
        "b", "block_gated", (12, 8), 5, 6, 80 + 8, 2 * 80, True)
    assert other.kind == "other" and other.params == 0
    small, plan = surgery.shrink(params, fp.Plan())
    assert [r.kind for r in size.report(small, plan)] == ["dense", "dense", "other"]


# --- layouts ---------------------------------------------------------------------------------------------------


def test_layouts_are_registered_and_recognise_their_nodes():
    assert WEIGHT_GATED_LAYOUT in LAYOUTS and BLOCK_GATED_LAYOUT in LAYOUTS
    assert LAYOUTS.index(WEIGHT_GATED_LAYOUT) < LAYOUTS.index(fp.layers.DENSE_LAYOUT)
    assert LAYOUTS.index(BLOCK_GATED_LAYOUT) < LAYOUTS.index(fp.layers.DENSE_LAYOUT)
    _, wp = _init(WeightGatedDense)
    _, bp = _init(BlockGatedDense, block=(4, 4))
    assert param_tree.layout_of(wp["W"], "W").kind == "weight_gated"
    assert param_tree.layout_of(bp["W"], "W").kind == "block_gated"
    no_bias = {k: v for k, v in bp["W"].items() if k != "bias"}
    assert param_tree.layout_of(no_bias, "W").kind == "block_gated"
    assert WEIGHT_GATED_LAYOUT.dense_params(wp["W"]) == 96
    assert int(BLOCK_GATED_LAYOUT.kept_weights({**bp["W"], "log_alpha_block": _shut_pattern((2, 3), [0])},
                                                fp.GateConfig())) == 80


K = jnp.zeros((8, 12))


@pytest.mark.parametrize(
    "node,message",
    [
        ({"log_alpha_weight": jnp.zeros((8, 12))}, "'log_alpha_weight' without 'kernel'"),
        ({"bias": jnp.zeros(12), "log_alpha_block": jnp.zeros((2, 3))}, "'log_alpha_block' without 'kernel'"),
        ({"kernel": K, "log_alpha_weight": jnp.zeros((8, 11))},
         r"log_alpha_weight has shape \(8, 11\), expected \(8, 12\)"),
        ({"kernel": K, "log_alpha_weight": jnp.zeros((12, 8))}, r"log_alpha_weight has shape \(12, 8\)"),
        ({"kernel": K, "log_alpha_block": jnp.zeros((3, 4))}, r"log_alpha_block \(3, 4\) does not tile the kernel"),
        ({"kernel": K, "log_alpha_block": jnp.zeros((16, 3))}, r"log_alpha_block \(16, 3\) does not tile"),
        ({"kernel": K, "log_alpha_block": jnp.zeros((6,))}, r"log_alpha_block has shape \(6,\), not 2-D"),
        ({"kernel": K, "log_alpha_weight": K, "scale": jnp.ones(12)}, r"unknown keys \['scale'\]"),
        ({"kernel": K, "log_alpha_block": jnp.zeros((2, 3)), "bias": jnp.zeros(8)}, r"bias has shape \(8,\)"),
        ({"kernel": jnp.zeros((2, 8, 12)), "log_alpha_weight": jnp.zeros((2, 8, 12))}, "kernel has shape .* not 2-D"),
    ],
)
def test_malformed_gated_kernel_nodes_are_refused_with_the_path(node, message):
    with pytest.raises(ValueError, match=rf"params at 'enc/W': {message}"):
        param_tree.layout_of(node, "enc/W")
    with pytest.raises(ValueError, match="params at 'enc/W'"):
        size.report({"enc": {"W": node}}, fp.Plan())
