"""The PID multiplier update (flaxprune/sparsity_control.py): hand-computed steps, and one default setting
reaching targets 0.3, 0.5 and 0.9 on a factorized toy within 0.01, never more than 0.02 past them."""

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flaxprune as fp
from flaxprune.training.config import multiplier_control

SETTINGS = fp.SparsityController(
    integral_gain=0.5, unwind_gain=2.0, proportional_gain=10.0, smoothing=0.5, scale=2.0,
    proportional_limit=3.0, max_log=1.0, derivative_gain=0.0,
)  # fmt: skip


def _steps(errors, settings=SETTINGS, lambda_2=0.0):
    """lambda_1 after each step of the bare transform, fed grads lambda_1 = s - t = -error."""
    tx = fp.sparsity_controller(settings)
    lambdas = {"lambda_1": jnp.zeros(()), "lambda_2": jnp.full((), lambda_2)}
    state, out = tx.init(lambdas), []
    for e in errors:
        grads = {"lambda_1": jnp.asarray(-e), "lambda_2": jnp.asarray(e * e)}
        updates, state = tx.update(grads, state, lambdas)
        lambdas = optax.apply_updates(lambdas, updates)
        out.append((float(lambdas["lambda_1"]), float(lambdas["lambda_2"]), float(state.integral)))
    return out


def test_steps_against_hand_computed_values():
    got = _steps([0.1, -0.2, 0.5, 1.0, 1.0, -0.1], lambda_2=0.7)
    # 1: I = 0.5 * 0.1 = 0.05; xi = 0.5 * 0.1 = 0.05; u = 0.05 + 10 * 0.05 = 0.55
    # 2: e < 0 against I > 0, unwinds: 0.05 - 2 * 0.2 = -0.35 would cross 0, so I = 0; xi = 0.025 - 0.1 = -0.075;
    #    u = 0 - 0.75
    # 3: I = 0 (no sign to be against): I = 0.5 * 0.5 = 0.25; xi = -0.0375 + 0.25 = 0.2125; u = 0.25 + 2.125
    # 4: I = 0.25 + 0.5 = 0.75; xi = 0.10625 + 0.5 = 0.60625, 10 xi clipped to 3; u = 3.75
    # 5: I = 0.75 + 0.5 = 1.25, clipped to max_log 1; xi = 0.303125 + 0.5 = 0.803125, P clipped to 3; u = 4
    # 6: e < 0 against I > 0, unwinds without crossing: I = 1 - 2 * 0.1 = 0.8; xi = 0.4015625 - 0.05, P clipped to
    #    3; u = 3.8
    want_u, want_i = [0.55, -0.75, 2.375, 3.75, 4.0, 3.8], [0.05, 0.0, 0.25, 0.75, 1.0, 0.8]
    for (lambda_1, lambda_2, integral), u, i in zip(got, want_u, want_i):
        np.testing.assert_allclose(lambda_1, -2.0 * math.sinh(u), rtol=1e-6)
        np.testing.assert_allclose(integral, i, rtol=1e-6, atol=1e-7)
        assert lambda_2 == 0.0  # held at zero from the first step


def test_derivative_term_against_hand_computed_values():
    settings = fp.SparsityController(
        integral_gain=0.5, unwind_gain=2.0, proportional_gain=10.0, smoothing=0.5, scale=2.0,
        proportional_limit=3.0, max_log=1.0, derivative_gain=100.0, derivative_smoothing=0.5,
    )  # fmt: skip
    got = _steps([0.1, 0.12, 0.05, 0.04], settings)
    # 1: I = 0.05; xi = 0.05; no change seen at the first step: d = 0; u = 0.05 + 0.5 = 0.55
    # 2: I = 0.05 + 0.06 = 0.11; xi = 0.025 + 0.06 = 0.085; d = 0.5 * 0.02 = 0.01; u = 0.11 + 0.85 + 1 = 1.96
    # 3: I = 0.135; xi = 0.0425 + 0.025 = 0.0675; d = 0.005 - 0.035 = -0.03; u = 0.135 + 0.675 - 3 = -2.19
    #    (the error falls fast: the multiplier turns round before the target is reached)
    # 4: I = 0.155; xi = 0.03375 + 0.02 = 0.05375; d = -0.015 - 0.005 = -0.02; fast term 0.5375 - 2 = -1.4625
    #    within the limit; u = 0.155 - 1.4625 = -1.3075
    for (lambda_1, _, integral), u, i in zip(got, [0.55, 1.96, -2.19, -1.3075], [0.05, 0.11, 0.135, 0.155]):
        np.testing.assert_allclose(lambda_1, -2.0 * math.sinh(u), rtol=1e-5)
        np.testing.assert_allclose(integral, i, rtol=1e-6)


def test_sign_follows_the_error_and_starts_at_zero():
    short, past = _steps([0.05])[0][0], _steps([-0.05])[0][0]
    assert short < 0 < past  # short of the target: a negative lambda_1 rewards sparsity; past it: the reverse
    assert _steps([0.0])[0][0] == 0.0


def test_inside_flop_optimizer_only_the_multipliers_follow_the_controller():
    trainable = {"params": {"w": jnp.ones((2, 2)), "log_alpha": jnp.zeros(3)}, "lagrangian": fp.init_multipliers()}
    tx = fp.flop_optimizer(1e-2, 1e-2, multiplier_control=SETTINGS)
    grads = jax.tree.map(jnp.zeros_like, trainable)
    grads["lagrangian"]["lambda_1"] = jnp.asarray(-0.1)  # s - t
    updates, _ = jax.jit(tx.update)(grads, tx.init(trainable), trainable)
    np.testing.assert_allclose(updates["lagrangian"]["lambda_1"], -2.0 * math.sinh(0.55), rtol=1e-6)
    assert float(jnp.abs(updates["params"]["w"]).max()) == 0.0


def test_adam_ascent_stays_selectable():
    tx = fp.flop_optimizer(1e-2, 1e-2, 0.1)  # FLOP's update: Adam ascent at the rate
    lambdas = fp.init_multipliers()
    trainable = {"params": {"w": jnp.ones(2)}, "lagrangian": lambdas}
    lagrangian = {"lambda_1": jnp.asarray(-0.3), "lambda_2": jnp.asarray(0.09)}
    grads = {"params": {"w": jnp.zeros(2)}, "lagrangian": lagrangian}
    updates, _ = tx.update(grads, tx.init(trainable), trainable)
    np.testing.assert_allclose(updates["lagrangian"]["lambda_1"], -0.1, rtol=1e-4)  # first Adam step: -rate * sign
    np.testing.assert_allclose(updates["lagrangian"]["lambda_2"], 0.1, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"integral_gain": -1.0}, "integral_gain=-1.0"),
        ({"unwind_gain": float("nan")}, "unwind_gain=nan"),
        ({"smoothing": 1.0}, "smoothing=1.0"),
        ({"derivative_smoothing": -0.1}, "derivative_smoothing=-0.1"),
        ({"derivative_gain": float("inf")}, "derivative_gain=inf"),
        ({"scale": 0.0}, "scale=0.0"),
        ({"max_log": True}, "max_log=True"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fp.SparsityController(**kwargs)


def test_misuse_is_refused_with_one_line():
    with pytest.raises(ValueError, match="pass one"):
        fp.flop_optimizer(1e-2, 1e-2, 0.1, multiplier_control=fp.SparsityController())
    with pytest.raises(ValueError, match="SparsityController"):
        fp.sparsity_controller({"integral_gain": 1.0})
    tx = fp.sparsity_controller()
    lambdas = fp.init_multipliers()
    with pytest.raises(ValueError, match="needs params"):
        tx.update(lambdas, tx.init(lambdas))


def test_config_picks_the_update():
    import ml_collections

    optim = ml_collections.ConfigDict({"multiplier_update": "pi", "multiplier": {"unwind_gain": 5.0}})
    assert multiplier_control(optim) == ("pi", fp.SparsityController(unwind_gain=5.0))
    optim = ml_collections.ConfigDict({"multiplier_update": "adam", "lambda_learning_rate": 0.02})
    assert multiplier_control(optim) == ("adam", 0.02)
    with pytest.raises(ValueError, match="multiplier_update='sgd'"):
        multiplier_control(ml_collections.ConfigDict({"multiplier_update": "sgd"}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gain'\]"):
        multiplier_control(ml_collections.ConfigDict({"multiplier_update": "pi", "multiplier": {"gain": 1.0}}))
    with pytest.raises(ValueError, match="config.optim.multiplier: SparsityController: scale=-1"):
        multiplier_control(ml_collections.ConfigDict({"multiplier_update": "pi", "multiplier": {"scale": -1}}))


# The toy of experiments/multiplier_toy.py: y = x @ W, W with a decaying spectrum, fitted by a gated full-rank
# FactorizedDense; targets on the 'factors' basis, each component 1/128 of the prunable weights. The controller
# at its defaults (lambda_lr None), the same settings for every target.
STEPS, WARMUP = 1500, 500


def _toy_run(target, steps=STEPS, warmup=WARMUP, control=None):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
    import multiplier_toy

    trajectory = multiplier_toy.run(target, 1.0, None, steps, warmup, control)
    return trajectory["expected_sparsity"], trajectory["hard_sparsity"]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.9])
def test_one_default_reaches_every_target_within_0_01(target):
    expected, hard = _toy_run(target)
    assert abs(hard[-1] - target) <= 0.01, hard[-1]
    assert abs(expected[-1] - target) <= 0.01, expected[-1]
    after_ramp = slice(WARMUP, None)
    assert max(expected[after_ramp].max(), hard[after_ramp].max()) <= target + 0.02


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_the_derivative_term_keeps_a_fast_ramp_from_overshooting(target):
    # Fine-tuning's schedule: the target ramped over half of a short run. The gates stay flat while the
    # integral winds up, then close together; the derivative term lets go before the crossing (PI control
    # alone overshoots this by 0.08 at 0.3 and 0.03 at 0.5).
    control = fp.SparsityController(derivative_gain=1000.0)
    expected, hard = _toy_run(target, steps=460, warmup=230, control=control)
    assert abs(hard[-1] - target) <= 0.01, hard[-1]
    after_ramp = slice(230, None)
    assert max(expected[after_ramp].max(), hard[after_ramp].max()) <= target + 0.02


def test_defaults_let_a_wound_up_integral_go_within_a_few_steps_of_passing_the_target():
    # A ramp that needed |lambda_1| ~ 30 leaves I ~ asinh(30) ~ 4.1. Past the target by 0.01 the default unwind
    # gain (30) takes 0.3 off per step: 4.1 / 0.3 -> 14 steps to 0, where it stops (not 137 as at gain 3).
    from flaxprune.sparsity_control import next_integral

    settings = fp.SparsityController()
    integral, steps = jnp.asarray(math.asinh(30.0), jnp.float32), 0
    while float(integral) > 0:
        integral, steps = next_integral(integral, jnp.asarray(-0.01), settings), steps + 1
    assert steps == math.ceil(math.asinh(30.0) / (30 * 0.01)) == 14 and float(integral) == 0.0
    assert float(next_integral(integral, jnp.asarray(-0.01), settings)) == pytest.approx(-0.003)  # then integral_gain
