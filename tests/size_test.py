"""Size accounting against hand-computed counts."""

import dataclasses
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp

P11 = 11 / 12  # P(z != 0) at log_alpha = 0
PLAN = fp.Plan()  # Net's plan: the gate settings every count takes from the model


class Net(nn.Module):
    plan: fp.Plan = fp.Plan()

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = fp.InputGatedDense(4, plan=self.plan, name="inp")(x, deterministic)  # 5 gates x 4
        x = fp.FactorizedDense(3, rank=2, plan=self.plan, name="fac")(x, deterministic)  # 2 gates x (4+3)
        x = fp.FactorizedDense(3, gated=False, plan=self.plan, name="plain")(x)
        return nn.Dense(2, name="head")(x)


def _params(log_alphas=None):
    params = Net().init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    if log_alphas:
        for name, la in log_alphas.items():
            params[name] = {**params[name], "log_alpha": jnp.asarray(la, jnp.float32)}
    return params


def test_prunable_and_expected_at_zero_log_alpha():
    params = _params({"inp": np.zeros(5), "fac": np.zeros(2)})
    assert fp.prunable_params(params) == 5 * 4 + 2 * 7
    np.testing.assert_allclose(fp.expected_params(params, PLAN), 34 * P11, rtol=1e-6)
    np.testing.assert_allclose(fp.expected_sparsity(params, PLAN), 1 - P11, rtol=1e-5)
    groups = dict((p, g.cost_per_gate) for p, g in fp.gate_groups(params))
    assert groups == {"inp": 4, "fac": 7}


def test_hard_counts_follow_deterministic_mask():
    params = _params({"inp": [9.0, -9.0, 9.0, -9.0, -9.0], "fac": [9.0, -9.0]})
    # inp keeps 2 inputs (2 x 4), fac keeps 1 component (1 x 7).
    assert int(fp.hard_params(params, PLAN)) == 8 + 7
    np.testing.assert_allclose(fp.hard_sparsity(params, PLAN), 1 - 15 / 34, rtol=1e-6)
    assert float(jax.jit(lambda p: fp.hard_sparsity(p, PLAN))(params)) == pytest.approx(1 - 15 / 34)


def test_expected_sparsity_gradient_closed_form():
    params = _params({"inp": np.linspace(-1, 1, 5), "fac": [0.3, -0.7]})
    grads = jax.grad(lambda p: fp.expected_sparsity(p, PLAN))(params)
    for name, cost in (("inp", 4), ("fac", 7)):
        p = np.asarray(fp.prob_nonzero(params[name]["log_alpha"]))
        np.testing.assert_allclose(grads[name]["log_alpha"], -cost * p * (1 - p) / 34, rtol=1e-5)
    chex.assert_trees_all_equal(grads["head"]["kernel"], jnp.zeros((3, 2)))


def test_temperature_enters_expected_size():
    params = _params({"inp": np.zeros(5), "fac": np.zeros(2)})
    cfg = fp.GateConfig(beta=2 / 3)
    p = 1 / (1 + (1 / 11) ** (2 / 3))
    np.testing.assert_allclose(fp.expected_params(params, cfg), 34 * p, rtol=1e-6)


def test_no_gates_is_a_clear_error():
    params = {"head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    assert fp.prunable_params(params) == 0
    with pytest.raises(ValueError, match="no gated layer"):
        fp.expected_sparsity(params, PLAN)


def test_report_rows():
    params = _params({"inp": [9.0, -9.0, 9.0, -9.0, -9.0], "fac": [9.0, -9.0]})
    rows = {r.path: r for r in fp.report(params, PLAN)}
    assert set(rows) == {"inp", "fac", "plain", "head", "(other params)"}
    assert (rows["inp"].kind, rows["inp"].rank, rows["inp"].params, rows["inp"].flops_per_token) == (
        "input_gated", 2, 2 * 4 + 4, 2 * 2 * 4
    )
    assert (rows["fac"].shape, rows["fac"].rank, rows["fac"].full_rank, rows["fac"].params) == ((4, 3), 1, 2, 7 + 3)
    assert rows["plain"].rank == math.floor(3 * 3 / 6) and not rows["plain"].gated
    assert rows["head"].kind == "dense" and rows["head"].params == 3 * 2 + 2
    text = fp.format_report(fp.report(params, PLAN))
    assert "input_gated" in text and "total" in text


def test_dense_basis_counts_the_layers_the_factors_stand_for():
    # inp: 5 x 4 dense; fac: a 4 x 3 matrix at rank 2, 14 weights in P and Q but 12 as a dense kernel.
    params = _params({"inp": np.zeros(5), "fac": np.zeros(2)})
    assert fp.prunable_params(params, "dense") == 20 + 12
    np.testing.assert_allclose(fp.expected_sparsity(params, PLAN, basis="dense"), 1 - 34 * P11 / 32, atol=1e-6)
    grads = jax.grad(lambda p: fp.expected_sparsity(p, PLAN, basis="dense"))(params)
    np.testing.assert_allclose(grads["fac"]["log_alpha"], -7 * P11 * (1 - P11) / 32 * np.ones(2), rtol=1e-5)


@pytest.mark.parametrize(
    "fac, kept_fac",
    [([9.0, 9.0], 12), ([9.0, -9.0], 7), ([-9.0, -9.0], 0)],  # both kept: merged, min(14, 12)
)
def test_dense_basis_hard_count_is_what_shrink_delivers(fac, kept_fac):
    params = _params({"inp": [9.0, -9.0, 9.0, -9.0, -9.0], "fac": fac})
    assert int(fp.hard_params(params, PLAN, basis="dense")) == 8 + kept_fac
    np.testing.assert_allclose(fp.hard_sparsity(params, PLAN, basis="dense"), 1 - (8 + kept_fac) / 32, rtol=1e-6)
    small, _ = fp.shrink(params, fp.Plan())
    fac_weights = sum(np.size(v) for k, v in small.get("fac", {}).items() if k != "bias")
    inp_weights = np.size(small["inp"]["kernel"])
    assert fac_weights + inp_weights == 8 + kept_fac
    assert float(jax.jit(lambda p: fp.hard_sparsity(p, PLAN, basis="dense"))(params)) == pytest.approx(
        1 - (8 + kept_fac) / 32
    )


def test_unknown_basis_is_named():
    params = _params({"inp": np.zeros(5), "fac": np.zeros(2)})
    with pytest.raises(ValueError, match=r"basis='total' is not a sparsity basis; accepted: \['factors', 'dense'\]"):
        fp.hard_sparsity(params, PLAN, basis="total")


def test_open_sparsity_needs_only_shapes():
    params = _params({"inp": np.zeros(5), "fac": np.zeros(2)})
    shapes = jax.eval_shape(lambda: params)
    assert fp.open_sparsity(shapes) == 0.0
    assert fp.open_sparsity(shapes, "dense") == pytest.approx(1 - 34 / 32)


def test_straight_through_sparsity_is_hard_in_value_and_expected_in_gradient():
    params = _params({"inp": [3.0, 1.0, -0.5, -4.0, 2.0], "fac": [-2.5, -2.0]})
    for basis in ("factors", "dense"):
        st = fp.straight_through_sparsity(params, PLAN, basis)
        assert float(st) == pytest.approx(float(fp.hard_sparsity(params, PLAN, basis)), abs=1e-7)
        got = jax.grad(lambda p, b=basis: fp.straight_through_sparsity(p, PLAN, b))(params)
        want = jax.grad(lambda p, b=basis: fp.expected_sparsity(p, PLAN, b))(params)
        chex.assert_trees_all_close(got, want, atol=1e-7)
    # FLOP's mask keeps round(E[L0]) gates per group, P(z != 0) = sigmoid(log_alpha + 2.398): inp's sum to
    # 0.996 + 0.968 + 0.870 + 0.168 + 0.988 = 3.99 (4 of 5 kept), fac's to 0.475 + 0.599 = 1.07 (1 of 2).
    assert float(fp.straight_through_sparsity(params, PLAN)) == pytest.approx(1 - (4 * 4 + 1 * 7) / 34)
    assert float(fp.straight_through_sparsity(params, PLAN, "dense")) == pytest.approx(1 - (4 * 4 + 1 * 7) / 32)
    # In the penalty, the multiplier's gradient is the delivered error s_hard - t.
    lagrangian = {"lambda_1": jnp.float32(-2.0), "lambda_2": jnp.float32(0.0)}
    grad = jax.grad(lambda lg: fp.penalty(fp.straight_through_sparsity(params, PLAN), 0.25, lg))(lagrangian)
    assert float(grad["lambda_1"]) == pytest.approx(1 - 23 / 34 - 0.25, abs=1e-6)
    # weight moves the value from the expected sparsity (0) to the hard one (1), the gradient staying the expected's
    e, h = float(fp.expected_sparsity(params, PLAN)), 1 - 23 / 34
    assert float(fp.straight_through_sparsity(params, PLAN, weight=0.0)) == pytest.approx(e, abs=1e-7)
    assert float(fp.straight_through_sparsity(params, PLAN, weight=0.25)) == pytest.approx(e + 0.25 * (h - e), abs=1e-6)
    got = jax.grad(lambda p: fp.straight_through_sparsity(p, PLAN, weight=0.25))(params)
    chex.assert_trees_all_close(got, jax.grad(lambda p: fp.expected_sparsity(p, PLAN))(params), atol=1e-7)


def test_uniform_rank_hand_computed():
    # inp: 5 gates x 4 weights, fac: 2 gates x (4 + 3); rank r keeps min(r, 5) * 4 + min(r, 2) * 7 of 34
    params = _params({"inp": np.zeros(5), "fac": np.zeros(2)})
    assert fp.uniform_rank(params, 0.0) == (5, 0.0)
    assert fp.uniform_rank(params, 0.5) == (1, pytest.approx(1 - 11 / 34))
    assert fp.uniform_rank(params, 0.3) == (2, pytest.approx(1 - 22 / 34))
    assert fp.uniform_rank(params, 0.9) == (0, 1.0)
    # dense basis: inp stands for its 5 x 4 kernel, fac for a 4 x 3 one: 32 weights
    assert fp.uniform_rank(params, 0.5, basis="dense") == (1, pytest.approx(1 - 11 / 32))
    shapes = jax.eval_shape(lambda: params)
    assert fp.uniform_rank(shapes, 0.5) == (1, pytest.approx(1 - 11 / 34))  # shapes suffice


@pytest.mark.parametrize(
    "kwargs,match",
    [({"sparsity": 1.0}, r"sparsity=1.0 must be in \[0, 1\)"), ({"sparsity": 0.5, "basis": "x"}, "basis='x'")],
)
def test_uniform_rank_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fp.uniform_rank(_params(), **kwargs)
    with pytest.raises(ValueError, match="no gated layer"):
        fp.uniform_rank({"head": {"kernel": jnp.ones((2, 2))}}, 0.5)


# --- One source of truth for the gate settings (issue 11) ----------------------------------


@dataclasses.dataclass(frozen=True)
class NetConfig:
    plan: fp.Plan = fp.Plan()


CLIP = fp.Plan(gate=fp.GateConfig(eval_mask="clip"))


def _kept_by_shrink(params, plan):
    small, _ = fp.shrink(params, plan)
    return sum(np.size(v) for name in ("inp", "fac") for k, v in small.get(name, {}).items() if k != "bias")


def test_sparsity_needs_the_gate_settings_and_takes_them_from_the_plan():
    # At log_alpha -2 'clip' keeps every gate (at 0.04); 'flop' shuts round(5 - 5 * 0.60) = 2 of them.
    params = _params({"inp": [-2.0] * 5, "fac": [0.0, -3.0]})
    kept = _kept_by_shrink(params, CLIP)
    assert kept == 5 * 4 + 7 and int(fp.hard_params(params, fp.GateConfig())) == 3 * 4 + 7
    for source in (CLIP, NetConfig(CLIP), CLIP.gate):
        assert int(fp.hard_params(params, source)) == kept
        np.testing.assert_allclose(fp.hard_sparsity(params, source), 1 - kept / 34, rtol=1e-6)
        np.testing.assert_allclose(fp.expected_params(params, source), fp.expected_params(params, CLIP.gate))
    assert float(jax.jit(fp.hard_sparsity, static_argnums=1)(params, CLIP)) == pytest.approx(1 - kept / 34)
    for fn in (fp.expected_params, fp.expected_sparsity, fp.hard_params, fp.hard_sparsity, fp.report):
        with pytest.raises(TypeError, match="gate"):
            fn(params)  # no silent default: the model's plan decides the eval mask


@pytest.mark.parametrize("bad", [None, "dense", {"plan": fp.Plan()}, NetConfig, 0.5])
def test_a_gate_source_that_is_not_one_is_named(bad):
    params = _params({"inp": np.zeros(5), "fac": np.zeros(2)})
    for fn in (fp.expected_params, fp.expected_sparsity, fp.hard_params, fp.hard_sparsity, fp.report):
        with pytest.raises(ValueError, match=rf"{fn.__name__}: gate=.* must be a flaxprune.GateConfig, a Plan"):
            fn(params, bad)


def test_report_takes_the_plan_from_its_gate_source():
    params = _params({"inp": [-2.0] * 5, "fac": [-9.0, -9.0]})
    small, cfg = fp.shrink(params, NetConfig(CLIP))
    assert "fac" not in small or set(small["fac"]) == {"bias"}
    for rows in (fp.report(small, cfg), fp.report(small, cfg.plan), fp.report(small, cfg.plan.gate, cfg.plan)):
        assert {r.path: r.kind for r in rows}["fac"] == "bias_only"
    gated = {r.path: r.rank for r in fp.report(params, CLIP)}
    assert gated["inp"] == 5  # 'clip' keeps every log_alpha -2; 'flop' would shut two
    with pytest.raises(ValueError, match="report: plan.gate=.* disagrees with gate="):
        fp.report(small, fp.GateConfig(), cfg.plan)
    with pytest.raises(ValueError, match="report: plan=.* must be a flaxprune.Plan or None"):
        fp.report(small, CLIP, plan="fac")


# --- Every param counted (issue 11) ----------------------------------------------------------


class NormNet(nn.Module):
    plan: fp.Plan = fp.Plan()

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = Net(self.plan, name="net")(x, deterministic)
        x = nn.LayerNorm(name="norm")(x)
        return x * self.param("scale", nn.initializers.ones, (2,)) + nn.Embed(3, 2, name="emb").embedding[0]


def test_report_total_is_total_params():
    model = NormNet()
    params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
    params["net"]["inp"]["log_alpha"] = jnp.asarray([9.0, -9.0, 9.0, -9.0, -9.0])
    params["net"]["fac"]["log_alpha"] = jnp.asarray([-9.0, -9.0])
    small, plan = fp.shrink(params, model.plan)
    rows = fp.report(small, plan)
    other = [r for r in rows if r.kind == "other"]
    assert [r.path for r in other] == ["(other params)"]
    assert other[0].params == 2 * 2 + 2 + 3 * 2  # LayerNorm scale and bias, the root's scale, the embedding
    assert sum(r.params for r in rows) == fp.total_params(small)
    total = int(fp.format_report(rows).splitlines()[-1].split()[1].replace(",", ""))
    assert total == fp.total_params(small)
    # On the gated params the table counts what shrink keeps.
    assert sum(r.params for r in fp.report(params, plan)) == fp.total_params(small)


# --- Non-finite gates (issue 11) -------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_log_alpha_gives_nan_sparsity(bad):
    params = _params({"inp": [9.0, bad, 9.0, -9.0, -9.0], "fac": [9.0, -9.0]})
    gate = fp.GateConfig()
    for basis in ("factors", "dense"):
        assert np.isnan(fp.hard_sparsity(params, gate, basis))
        assert np.isnan(jax.jit(lambda p: fp.hard_sparsity(p, gate, basis))(params))
        if np.isnan(bad):  # an infinite gate is surely open: its expected count is exact, not NaN
            assert np.isnan(jax.jit(lambda p: fp.expected_sparsity(p, gate, basis))(params))
    assert np.isnan(fp.expected_params(params, gate)) == bool(np.isnan(bad))
