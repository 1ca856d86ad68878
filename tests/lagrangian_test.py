"""Tests for flaxprune.lagrangian: penalty, schedules, ascent and FLOP's optimizer."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from flaxprune import lagrangian as lg
from flaxprune.gates import GateConfig, expected_l0, prob_nonzero

LR, GATE_LR, LAMBDA_LR = 1e-3, 1e-2, 5e-2


def _trainable():
    return {
        "params": {
            "dense": {
                "kernel": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], jnp.float32),  # [in, out]
                "bias": jnp.array([0.1, -0.2, 0.3], jnp.float32),  # [out]
            },
            "gate": {"log_alpha": jnp.array([0.0, 1.0, -1.0, 2.0], jnp.float32)},  # [n]
        },
        "lagrangian": lg.init_multipliers(),
    }


def _grads(gate_scale=1.0, lambda_scale=1.0):
    return {
        "params": {
            "dense": {
                "kernel": jnp.array([[3e-3, -2e-3, 1e-3], [-1e-3, 4e-3, -3e-3]], jnp.float32),
                "bias": jnp.array([2e-3, -1e-3, 1e-3], jnp.float32),
            },
            "gate": {"log_alpha": gate_scale * jnp.array([1.0, -2.0, 3.0, -4.0], jnp.float32)},
        },
        "lagrangian": {
            "lambda_1": jnp.array(-0.2 * lambda_scale, jnp.float32),
            "lambda_2": jnp.array(0.04 * lambda_scale, jnp.float32),
        },
    }


def _one_update(tx, grads, params=None):
    params = _trainable() if params is None else params
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    return updates


class PenaltyTest(parameterized.TestCase):
    @parameterized.parameters(
        # (s, t, l1, l2, expected)
        (0.3, 0.5, 2.0, 3.0, 2.0 * -0.2 + 3.0 * 0.04),  # -0.28
        (0.7, 0.5, -1.0, 0.5, -1.0 * 0.2 + 0.5 * 0.04),  # -0.18
        (0.5, 0.5, 7.0, 9.0, 0.0),
        (0.2, 0.0, 0.0, 0.0, 0.0),
    )
    def test_values(self, s, t, l1, l2, expected):
        lambdas = {"lambda_1": jnp.float32(l1), "lambda_2": jnp.float32(l2)}
        out = jax.jit(lg.penalty)(jnp.float32(s), jnp.float32(t), lambdas)
        chex.assert_shape(out, ())
        np.testing.assert_allclose(out, expected, atol=1e-6)

    def test_gradients(self):
        # d/dl1 = s - t, d/dl2 = (s - t)^2, d/ds = l1 + 2 l2 (s - t).
        lambdas = {"lambda_1": jnp.float32(2.0), "lambda_2": jnp.float32(3.0)}
        gs, gl = jax.grad(lg.penalty, argnums=(0, 2))(jnp.float32(0.3), jnp.float32(0.5), lambdas)
        np.testing.assert_allclose(gs, 2.0 + 2 * 3.0 * -0.2, atol=1e-6)
        chex.assert_trees_all_close(gl, {"lambda_1": jnp.float32(-0.2), "lambda_2": jnp.float32(0.04)}, atol=1e-6)

    def test_missing_multiplier_raises(self):
        with pytest.raises(ValueError, match="lambdas.*lambda_2"):
            lg.penalty(0.3, 0.5, {"lambda_1": 1.0})

    def test_init_multipliers(self):
        chex.assert_trees_all_equal(
            lg.init_multipliers(), {"lambda_1": jnp.zeros((), jnp.float32), "lambda_2": jnp.zeros((), jnp.float32)}
        )
        chex.assert_trees_all_equal_dtypes(
            lg.init_multipliers(), {"lambda_1": jnp.float32(0), "lambda_2": jnp.float32(0)}
        )


class TargetScheduleTest(parameterized.TestCase):
    @parameterized.parameters((0, 0.0), (50, 0.3), (100, 0.6), (200, 0.6), (10_000, 0.6))
    def test_ramp(self, step, expected):
        sched = lg.target_schedule(0.6, 100)
        np.testing.assert_allclose(sched(step), expected, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(sched)(jnp.int32(step)), expected, rtol=1e-6)

    @parameterized.parameters(0, 1, 12345)
    def test_no_warmup_is_constant(self, step):
        sched = lg.target_schedule(0.4, 0)
        np.testing.assert_allclose(jax.jit(sched)(jnp.int32(step)), 0.4, rtol=1e-6)

    @parameterized.parameters((0, -0.5), (50, 0.0), (100, 0.5), (400, 0.5))
    def test_ramp_from_a_start(self, step, expected):
        sched = lg.target_schedule(0.5, 100, start=-0.5)
        np.testing.assert_allclose(jax.jit(sched)(jnp.int32(step)), expected, atol=1e-7)

    def test_bad_start(self):
        with pytest.raises(ValueError, match=r"start=1.5 must be a finite number < 1"):
            lg.target_schedule(0.5, 10, start=1.5)

    def test_traced_steps_vectorised(self):
        out = jax.jit(jax.vmap(lg.target_schedule(0.5, 10)))(jnp.arange(0, 25, 5))
        chex.assert_trees_all_close(out, jnp.array([0.0, 0.25, 0.5, 0.5, 0.5]), atol=1e-7)

    @parameterized.parameters(
        ("target", 1.0, 10),
        ("target", -0.1, 10),
        ("target", "0.5", 10),
        ("target", True, 10),
        ("warmup_steps", 0.5, -1),
        ("warmup_steps", 0.5, 2.5),
        ("warmup_steps", 0.5, True),
    )
    def test_bad_inputs(self, name, target, warmup):
        with pytest.raises(ValueError, match=name) as info:
            lg.target_schedule(target, warmup)
        assert repr(target if name == "target" else warmup) in str(info.value)


class NoamScheduleTest(parameterized.TestCase):
    @parameterized.parameters(4, 100)
    def test_closed_form(self, warmup):
        lr = 0.5
        sched = jax.jit(lg.noam_schedule(lr, warmup))
        # count 0 is FLOP's iteration 1: lr * min(1, warmup^-1.5).
        np.testing.assert_allclose(sched(jnp.int32(0)), lr * warmup**-1.5, rtol=1e-5)
        # count warmup-1: k = warmup, the peak lr / sqrt(warmup) where both branches meet.
        np.testing.assert_allclose(sched(jnp.int32(warmup - 1)), lr / math.sqrt(warmup), rtol=1e-5)
        # well past warmup: inverse square root of k = count + 1.
        np.testing.assert_allclose(sched(jnp.int32(10 * warmup)), lr / math.sqrt(10 * warmup + 1), rtol=1e-5)

    def test_peak_is_at_warmup(self):
        values = jax.vmap(lg.noam_schedule(1.0, 8))(jnp.arange(32))
        assert int(jnp.argmax(values)) == 7

    @parameterized.parameters(("learning_rate", 0.0, 10), ("learning_rate", -1.0, 10), ("warmup_steps", 1.0, 0))
    def test_bad_inputs(self, name, lr, warmup):
        with pytest.raises(ValueError, match=name):
            lg.noam_schedule(lr, warmup)


class GradientAscentTest(parameterized.TestCase):
    def test_sgd_moves_along_gradient(self):
        tx = lg.gradient_ascent(optax.sgd(0.1))
        params = {"a": jnp.array([1.0, 2.0]), "b": jnp.float32(3.0)}
        grads = {"a": jnp.array([0.5, -1.5]), "b": jnp.float32(2.0)}
        state = tx.init(params)
        assert isinstance(state, lg.GradientAscentState)
        updates, state = jax.jit(tx.update)(grads, state, params)
        chex.assert_trees_all_close(updates, jax.tree.map(lambda g: 0.1 * g, grads), atol=1e-7)
        assert isinstance(state, lg.GradientAscentState)

    def test_adam_first_step(self):
        tx = lg.gradient_ascent(optax.adam(0.01))
        g = jnp.array([3.0, -0.2])
        updates, _ = tx.update(g, tx.init(g), g)
        chex.assert_trees_all_close(updates, 0.01 * jnp.sign(g), rtol=1e-4)

    def test_maximises_a_concave_function(self):
        def f(x):
            return -jnp.sum(jnp.square(x - 2.0))  # maximum at 2

        tx = lg.gradient_ascent(optax.sgd(0.1))

        def step(carry, _):
            x, state = carry
            updates, state = tx.update(jax.grad(f)(x), state, x)
            return (optax.apply_updates(x, updates), state), None

        x = jnp.zeros(3)
        (x, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=100))((x, tx.init(x)))
        chex.assert_trees_all_close(x, jnp.full(3, 2.0), atol=1e-4)

    def test_parameter_terms_keep_their_direction(self):
        # The gradient, not the update, is negated: weight decay still pulls towards zero.
        tx = lg.gradient_ascent(optax.chain(optax.add_decayed_weights(0.5), optax.sgd(1.0)))
        p, g = jnp.array([2.0]), jnp.array([0.25])
        updates, _ = tx.update(g, tx.init(p), p)
        chex.assert_trees_all_close(updates, g - 0.5 * p)


class ParamLabelsTest(parameterized.TestCase):
    def test_literal_tree(self):
        x = jnp.zeros(2)
        tree = {
            "params": {
                "dense": {"kernel": x, "bias": x, "log_alpha": x},
                "block": {"log_alpha_0": x, "log_alpha_1": x, "my_log_alpha": x},
                "lagrangian": {"w": x},  # not top level: ordinary weights
                "stack": [x, x],
            },
            "lagrangian": {"lambda_1": x, "lambda_2": x},
        }
        expected = {
            "params": {
                "dense": {"kernel": "weights", "bias": "weights", "log_alpha": "gates"},
                "block": {"log_alpha_0": "gates", "log_alpha_1": "gates", "my_log_alpha": "weights"},
                "lagrangian": {"w": "weights"},
                "stack": ["weights", "weights"],
            },
            "lagrangian": {"lambda_1": "multipliers", "lambda_2": "multipliers"},
        }
        assert lg.param_labels(tree) == expected

    def test_flax_params(self):
        from flaxprune.gates import HardConcreteGate

        params = HardConcreteGate(n=3).init(jax.random.key(0), deterministic=True)["params"]
        labels = lg.param_labels({"params": params, "lagrangian": lg.init_multipliers()})
        assert labels == {
            "params": {"log_alpha": "gates"},
            "lagrangian": {"lambda_1": "multipliers", "lambda_2": "multipliers"},
        }


class FlopOptimizerTest(parameterized.TestCase):
    def test_one_update_moves_each_group_at_its_rate(self):
        tx = lg.flop_optimizer(LR, GATE_LR, LAMBDA_LR)
        grads = _grads()
        updates = _one_update(tx, grads)
        chex.assert_trees_all_equal_shapes(updates, grads)
        # Adam's first step is lr * sign(g): down the gradient for weights and
        # gates, up the gradient for the multipliers.
        expected = {
            "params": {
                "dense": jax.tree.map(lambda g: -LR * jnp.sign(g), grads["params"]["dense"]),
                "gate": {"log_alpha": -GATE_LR * jnp.sign(grads["params"]["gate"]["log_alpha"])},
            },
            "lagrangian": jax.tree.map(lambda g: LAMBDA_LR * jnp.sign(g), grads["lagrangian"]),
        }
        chex.assert_trees_all_close(updates, expected, rtol=1e-3)

    def test_weights_match_clip_then_adamw_alone(self):
        # eps=1 makes Adam's step depend on the gradient's scale, so clipping shows.
        kw = dict(b1=0.9, b2=0.999, eps=1.0, weight_decay=0.1)
        tx = lg.flop_optimizer(LR, GATE_LR, LAMBDA_LR, clip_norm=1e-3, **kw)
        mask = jax.tree.map(lambda p: p.ndim >= 2, _trainable()["params"]["dense"])
        ref = optax.chain(optax.clip_by_global_norm(1e-3), optax.adamw(LR, mask=mask, **kw))
        dense, g_dense = _trainable()["params"]["dense"], _grads()["params"]["dense"]
        ref_updates, _ = ref.update(g_dense, ref.init(dense), dense)
        updates = _one_update(tx, _grads())
        chex.assert_trees_all_close(updates["params"]["dense"], ref_updates, rtol=1e-5)
        unclipped = _one_update(lg.flop_optimizer(LR, GATE_LR, LAMBDA_LR, clip_norm=None, **kw), _grads())
        assert not np.allclose(unclipped["params"]["dense"]["kernel"], updates["params"]["dense"]["kernel"], rtol=1e-2)

    @parameterized.parameters(1.0, 1e-2)
    def test_clipping_ignores_gates_and_multipliers(self, clip_norm):
        # Were the norm global, 1e9-sized gate and multiplier gradients would scale the
        # ~1e-3 weight gradients down to ~1e-12, far below Adam's eps, and the step would vanish.
        tx = lg.flop_optimizer(LR, GATE_LR, LAMBDA_LR, clip_norm=clip_norm)
        small = _one_update(tx, _grads())
        huge = _one_update(tx, _grads(gate_scale=1e9, lambda_scale=1e9))
        chex.assert_trees_all_close(huge["params"]["dense"], small["params"]["dense"], rtol=1e-6)
        np.testing.assert_allclose(jnp.abs(huge["params"]["dense"]["kernel"]), LR, rtol=1e-3)

    def test_weight_decay_only_on_matrices(self):
        tx = lg.flop_optimizer(LR, GATE_LR, LAMBDA_LR, weight_decay=0.1)
        params = _trainable()
        updates = _one_update(tx, jax.tree.map(jnp.zeros_like, params), params)
        expected = jax.tree.map(jnp.zeros_like, params)
        expected["params"]["dense"]["kernel"] = -LR * 0.1 * params["params"]["dense"]["kernel"]
        chex.assert_trees_all_close(updates, expected, atol=1e-9)

    def test_schedules_for_weights_and_gates(self):
        tx = lg.flop_optimizer(lambda c: 2e-3 * (c + 1), optax.constant_schedule(3e-2), LAMBDA_LR)
        updates = _one_update(tx, _grads())
        np.testing.assert_allclose(jnp.abs(updates["params"]["dense"]["bias"]), 2e-3, rtol=1e-3)
        np.testing.assert_allclose(jnp.abs(updates["params"]["gate"]["log_alpha"]), 3e-2, rtol=1e-3)

    @parameterized.parameters(
        ("learning_rate", dict(learning_rate=0.0)),
        ("gate_learning_rate", dict(gate_learning_rate=-1e-2)),
        ("lambda_learning_rate", dict(lambda_learning_rate=0.0)),
        ("lambda_learning_rate", dict(lambda_learning_rate=optax.constant_schedule(1e-2))),
        ("clip_norm", dict(clip_norm=0.0)),
        ("weight_decay", dict(weight_decay=-0.1)),
        ("b2", dict(b2=1.0)),
        ("eps", dict(eps=-1.0)),
    )
    def test_bad_inputs(self, name, override):
        kwargs = dict(learning_rate=LR, gate_learning_rate=GATE_LR, lambda_learning_rate=LAMBDA_LR) | override
        with pytest.raises(ValueError, match=name):
            lg.flop_optimizer(**kwargs)


def test_ascent_drives_toy_gates_to_target_sparsity():
    """End to end: 100 gates that want to stay on, pushed to 50% sparsity by the multipliers."""
    n, target, pull, steps = 100, 0.5, 0.1, 400
    cfg = GateConfig()

    def sparsity(log_alpha):
        return 1.0 - expected_l0(log_alpha, cfg) / n  # one unit of cost per gate

    def loss_fn(trainable):
        log_alpha = trainable["params"]["gates"]["log_alpha"]
        task = -pull * jnp.mean(prob_nonzero(log_alpha, cfg))  # prefers every gate on
        s = sparsity(log_alpha)
        return task + lg.penalty(s, target, trainable["lagrangian"]), s

    tx = lg.flop_optimizer(1e-3, 5e-2, 1e-2)
    trainable = {
        "params": {"gates": {"log_alpha": 0.5 * jax.random.normal(jax.random.key(0), (n,))}},
        "lagrangian": lg.init_multipliers(),
    }

    def step(carry, _):
        trainable, opt_state = carry
        (_, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return (trainable, opt_state), (s, trainable["lagrangian"])

    run = jax.jit(lambda carry: jax.lax.scan(step, carry, None, length=steps))
    (trainable, _), (s_hist, lam_hist) = run((trainable, tx.init(trainable)))
    s_final = sparsity(trainable["params"]["gates"]["log_alpha"])

    assert s_hist[0] < 0.2  # starts far below the target
    # s < t, so ascent makes lambda_1 negative from the first step on.
    assert lam_hist["lambda_1"][0] < 0
    assert np.all(lam_hist["lambda_1"][:50] < 0)
    assert np.all(np.diff(lam_hist["lambda_2"]) >= 0)  # d/d lambda_2 = (s - t)^2 >= 0
    assert s_hist[100] > s_hist[0] + 0.1  # sparsity rises
    assert abs(float(s_final) - target) < 0.03
    # At the saddle the task's pull and lambda_1 balance: lambda_1 = -pull.
    np.testing.assert_allclose(trainable["lagrangian"]["lambda_1"], -pull, atol=0.02)


# --- Bad input is refused (issue 11) -------------------------------------------------------------


@pytest.mark.parametrize("name", ["learning_rate", "gate_learning_rate", "lambda_learning_rate"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_flop_optimizer_refuses_non_finite_rates(name, value):
    kwargs = dict(learning_rate=LR, gate_learning_rate=GATE_LR, lambda_learning_rate=LAMBDA_LR) | {name: value}
    with pytest.raises(ValueError, match=rf"flop_optimizer: {name}={value!r} must be a finite number > 0"):
        lg.flop_optimizer(**kwargs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: lg.noam_schedule(math.inf, 10), "noam_schedule: learning_rate=inf must be a finite number > 0"),
        (
            lambda: lg.target_schedule(0.5, 10, start=-math.inf),
            "target_schedule: start=-inf must be a finite number < 1",
        ),
    ],
)
def test_schedules_refuse_non_finite_numbers(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_gradient_ascent_wraps_an_optimizer_not_a_rate():
    with pytest.raises(ValueError, match=r"gradient_ascent: inner=0.01 must be an optax.GradientTransformation"):
        lg.gradient_ascent(1e-2)


@pytest.mark.parametrize(
    "tree",
    [
        {"params": _trainable()["params"]},  # the multipliers forgotten
        _trainable()["params"],  # the bare params
        {"params": _trainable()["params"], "lagrangian": {"lambda_1": jnp.zeros(())}},
    ],
)
def test_flop_optimizer_init_needs_the_multipliers(tree):
    tx = lg.flop_optimizer(LR, GATE_LR, LAMBDA_LR)
    with pytest.raises(ValueError, match=r"\{'params': \.\.\., 'lagrangian': fp.init_multipliers\(\)\}"):
        tx.init(tree)
    tx.init(_trainable())
    jax.eval_shape(tx.init, _trainable())  # shapes alone, as a checkpoint restore builds them
