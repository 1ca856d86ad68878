"""Hard-concrete gates against closed forms and hand-computed values."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxprune import gates
from flaxprune.gates import GateConfig

SHIFT = math.log(0.1 / 1.1)  # beta * log(-l / r) with FLOP's constants


def test_prob_nonzero_closed_form():
    # log_alpha = 0: sigmoid(-log(1/11)) = sigmoid(log 11) = 11/12.
    np.testing.assert_allclose(gates.prob_nonzero(jnp.zeros(3)), np.full(3, 11 / 12), rtol=1e-6)
    # log_alpha = beta*log(-l/r): exactly one half.
    np.testing.assert_allclose(gates.prob_nonzero(jnp.array([SHIFT])), [0.5], rtol=1e-6)
    # Louizos' temperature shifts the threshold: beta = 2/3.
    cfg = GateConfig(beta=2 / 3)
    np.testing.assert_allclose(gates.prob_nonzero(jnp.array([0.0]), cfg), [1 / (1 + (1 / 11) ** (2 / 3))], rtol=1e-6)


def test_expected_l0_is_sum_of_probabilities():
    la = jnp.array([0.0, SHIFT, 50.0, -50.0])
    np.testing.assert_allclose(gates.expected_l0(la), 11 / 12 + 0.5 + 1.0 + 0.0, rtol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 2 / 3])
def test_monte_carlo_matches_closed_form(beta):
    cfg = GateConfig(beta=beta)
    la = jnp.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    z = jax.jit(lambda k: gates.sample(k, la, cfg, batch_shape=(100_000,)))(jax.random.key(0))
    chex.assert_shape(z, (100_000, 5))
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    # P(z > 0) = sigmoid(log_alpha - beta log(-l/r)); P(z = 1) = sigmoid(log_alpha - beta log((1-l)/(r-1))).
    p_nonzero = np.asarray(gates.prob_nonzero(la, cfg))
    p_one = 1 / (1 + np.exp(-(np.asarray(la) - beta * math.log(1.1 / 0.1))))
    np.testing.assert_allclose(np.mean(np.asarray(z) > 0, axis=0), p_nonzero, atol=0.005)
    np.testing.assert_allclose(np.mean(np.asarray(z) == 1, axis=0), p_one, atol=0.005)


def test_sample_shared_across_batch_by_default():
    z = gates.sample(jax.random.key(1), jnp.zeros(7))
    chex.assert_shape(z, (7,))
    z2 = gates.sample(jax.random.key(1), jnp.zeros(7))
    chex.assert_trees_all_equal(z, z2)


def test_eval_mask_rule_hand_computed():
    # soft = sigmoid(0.8 * log_alpha); zeros = round(n - L0) smallest entries.
    la = jnp.array([3.0, -3.0, 0.5, 40.0, -40.0])
    l0 = float(gates.expected_l0(la))  # 0.9958 + 0.2113 + 0.9476 + 1 + 0 = 3.155
    assert round(5 - l0) == 2
    soft = 1 / (1 + np.exp(-0.8 * np.asarray(la)))
    expected = soft.copy()
    expected[[1, 4]] = 0.0  # the two smallest soft values
    np.testing.assert_allclose(gates.deterministic_mask(la), expected, rtol=1e-6)


def test_clip_eval_mask_hand_computed():
    # clip(sigmoid(log_alpha) * 1.2 - 0.1, 0, 1): sigmoid(3) -> 1.04 -> 1; sigmoid(-3) -> -0.043 -> 0;
    # sigmoid(0.5) = 0.62246 -> 0.64695; and exactly 0 below log_alpha = -log(11) = -2.398.
    cfg = gates.GateConfig(eval_mask="clip")
    la = jnp.array([3.0, -3.0, 0.5, 40.0, -40.0, -2.39, -2.41])
    expected = [1.0, 0.0, 0.6469524, 1.0, 0.0, 1 / (1 + np.exp(2.39)) * 1.2 - 0.1, 0.0]
    np.testing.assert_allclose(gates.deterministic_mask(la, cfg), expected, rtol=1e-5, atol=1e-7)
    assert 0 < float(gates.deterministic_mask(la, cfg)[5]) < 1e-3


def test_clip_eval_mask_keeps_an_open_start_exact():
    # drop_rate 0.01: log_alpha ~ 4.6, every value clips to exactly 1 (no component cut by rank).
    cfg = gates.GateConfig(eval_mask="clip", drop_rate=0.01)
    la = gates.log_alpha_init(cfg.drop_rate, cfg.init_std)(jax.random.key(0), (384,))
    np.testing.assert_array_equal(jax.jit(gates.deterministic_mask, static_argnums=1)(la, cfg), np.ones(384))


def test_unknown_eval_mask_is_named():
    with pytest.raises(ValueError, match=r"eval_mask='soft' is not a mask rule; accepted: \['flop', 'clip'\]"):
        gates.GateConfig(eval_mask="soft")


@pytest.mark.parametrize(
    "n_half,n_one,zeros",
    [
        (5, 2, 2),  # L0 = 2.5 + 2 = 4.5, n - L0 = 2.5 -> 2 (half to even; half-up would give 3)
        (7, 0, 4),  # L0 = 3.5, n - L0 = 3.5 -> 4
        (1, 0, 0),  # n - L0 = 0.5 -> 0
    ],
)
def test_eval_mask_round_half_even_tie(n_half, n_one, zeros):
    # log_alpha = beta log(-l/r) gives P(z != 0) = 0.5 exactly; +100 gives exactly 1.
    la = jnp.array([SHIFT] * n_half + [100.0] * n_one, jnp.float32)
    assert float(jnp.float32(la.shape[0]) - gates.expected_l0(la)) == n_half / 2
    mask = np.asarray(jax.jit(gates.deterministic_mask)(la))
    assert np.count_nonzero(mask == 0) == zeros
    # Equal soft values: ties go to the lowest indices.
    np.testing.assert_array_equal(mask[:zeros], 0.0)
    assert np.all(mask[zeros:] > 0)


def test_gradient_flows_through_sample_and_expected_l0():
    la = jnp.array([0.0, 1.0, -1.0])
    g = jax.grad(lambda a: jnp.sum(gates.sample(jax.random.key(3), a)))(la)
    assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)
    p = np.asarray(gates.prob_nonzero(la))
    np.testing.assert_allclose(jax.grad(gates.expected_l0)(la), p * (1 - p), rtol=1e-5)


def test_log_alpha_init_statistics():
    x = gates.log_alpha_init(drop_rate=0.2, std=0.5)(jax.random.key(0), (50_000,))
    np.testing.assert_allclose(float(x.mean()), math.log(0.8 / 0.2), atol=0.01)
    np.testing.assert_allclose(float(x.std()), 0.5, atol=0.01)
    default = gates.log_alpha_init()(jax.random.key(0), (1000,))
    assert abs(float(default.mean())) < 0.002 and float(default.std()) < 0.012


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"drop_rate": 0.0}, "drop_rate"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"limit_l": 0.1}, "limit_l"),
        ({"limit_r": 0.9}, "limit_r"),
    ],
)
def test_gate_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GateConfig(**kwargs)


def test_log_alpha_init_rejects_bad_drop_rate():
    with pytest.raises(ValueError, match=r"drop_rate=1\.5"):
        gates.log_alpha_init(drop_rate=1.5)


def test_module_train_eval_and_missing_rng():
    gate = gates.HardConcreteGate(6)
    variables = gate.init(jax.random.key(0), deterministic=True)
    chex.assert_shape(variables["params"]["log_alpha"], (6,))
    eval_mask = gate.apply(variables, deterministic=True)
    chex.assert_trees_all_close(eval_mask, gates.deterministic_mask(variables["params"]["log_alpha"]))
    z = gate.apply(variables, deterministic=False, rngs={"gates": jax.random.key(1)})
    chex.assert_shape(z, (6,))
    again = gate.apply(variables, deterministic=False, rngs={"gates": jax.random.key(1)})
    other = gate.apply(variables, deterministic=False, rngs={"gates": jax.random.key(2)})
    chex.assert_trees_all_equal(z, again)  # a function of the explicit key only
    assert not np.allclose(z, other)
    per_example = gate.apply(variables, (4,), deterministic=False, rngs={"gates": jax.random.key(1)})
    chex.assert_shape(per_example, (4, 6))
    with pytest.raises(ValueError, match=r"rngs=\{'gates': key\}"):
        gate.apply(variables, deterministic=False)


def test_module_draws_from_gates_stream_only():
    class Two(nn.Module):
        @nn.compact
        def __call__(self):
            return gates.HardConcreteGate(4, deterministic=False)(), gates.HardConcreteGate(4, deterministic=False)()

    variables = Two().init({"params": jax.random.key(0), "gates": jax.random.key(1)})
    a, b = Two().apply(variables, rngs={"gates": jax.random.key(2)})
    assert not np.allclose(a, b)  # each gate folds its own path into the stream
