"""FLOP training of an NNX model: nnx.Optimizer over Trainable(model) with flop_optimizer moves the sparsity."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flaxprune as fp
from flaxprune import nnx as fpx
from nnx_models import D_OUT, X, MLP, materialize

Y = jnp.arange(X.shape[0]) % D_OUT


def task_loss(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def test_a_few_steps_move_the_expected_sparsity_toward_the_target():
    model = materialize(lambda: MLP(nnx.Rngs(params=0, gates=1, dropout=2)))
    trainable = fpx.Trainable(model)
    assert trainable.params is model
    optimizer = nnx.Optimizer(trainable, fpx.flop_optimizer(1e-3, 0.1), wrt=nnx.Param)
    step = fpx.make_train_step(task_loss, 0.6)
    start = float(fpx.expected_sparsity(model))
    gates_before = np.asarray(model.out.log_alpha[...])
    for _ in range(25):
        metrics = step(trainable, optimizer, (X, Y))
    end = float(fpx.expected_sparsity(model))
    assert start < 0.3 and end > start + 0.1, (start, end)
    assert float(metrics["target"]) == pytest.approx(0.6)
    assert float(metrics["lambda_1"]) < 0  # short of the target: the penalty rewards sparsity
    assert not np.allclose(model.out.log_alpha[...], gates_before)
    assert int(optimizer.step[...]) == 25
    assert int(model.fc1.rngs.count[...]) == 25  # one gate draw per step, from the layer's own stream


def test_the_optimizer_sees_the_linen_trainable_tree():
    trainable = fpx.Trainable(nnx.eval_shape(lambda: MLP(nnx.Rngs(0))))
    pure = nnx.to_pure_dict(nnx.state(trainable, nnx.Param))
    assert sorted(pure) == ["lagrangian", "params"] and sorted(pure["lagrangian"]) == ["lambda_1", "lambda_2"]
    labels = fp.param_labels(nnx.as_pure(nnx.state(trainable, nnx.Param)))
    assert labels["params"]["fc1"]["log_alpha"] == "gates" and labels["params"]["fc1"]["P"] == "weights"
    assert labels["lagrangian"]["lambda_1"] == "multipliers"
    # With the Variable boxes (what nnx.Optimizer hands to init) a gate is still named by its dict key.
    boxed = jax.tree.leaves(fp.param_labels(nnx.state(trainable, nnx.Param))["params"]["fc1"]["log_alpha"])
    assert boxed == ["gates"]
    assert fpx.flop_optimizer is fp.flop_optimizer


def test_penalty_is_the_lagrangian_of_the_model_sparsity():
    model = materialize(lambda: MLP(nnx.Rngs(0)))
    trainable = fpx.Trainable(model)
    trainable.lagrangian.lambda_1[...] = jnp.float32(-2.0)
    trainable.lagrangian.lambda_2[...] = jnp.float32(3.0)
    s = fpx.expected_sparsity(model)
    got = fpx.penalty(trainable, 0.5, constraint="expected")
    np.testing.assert_allclose(got, -2.0 * (s - 0.5) + 3.0 * (s - 0.5) ** 2, rtol=1e-6)
    h = fpx.hard_sparsity(model)  # the default holds what shrink delivers
    np.testing.assert_allclose(fpx.penalty(trainable, 0.5), -2.0 * (h - 0.5) + 3.0 * (h - 0.5) ** 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"constraint='soft' is not a constrained sparsity; accepted: \['hard'"):
        fpx.penalty(trainable, 0.5, constraint="soft")


def one_line_error(fn, *words):
    with pytest.raises(ValueError) as info:
        fn()
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_bad_input_is_one_line_naming_the_parameter():
    one_line_error(lambda: fpx.Trainable({"w": 1}), "model=dict")
    one_line_error(lambda: fpx.make_train_step(task_loss, 1.5), "target=1.5")
    one_line_error(lambda: fpx.make_train_step("loss", 0.5), "task_loss='loss'")
    one_line_error(lambda: fpx.make_train_step(task_loss, 0.5, basis="rows"), "basis='rows'")
    one_line_error(lambda: fpx.flop_optimizer(-1.0, 1e-2), "learning_rate=-1.0")
    one_line_error(lambda: fpx.penalty(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), 0.5), "trainable=Linear")
    step = fpx.make_train_step(task_loss, 0.5)
    bare = nnx.eval_shape(lambda: MLP(nnx.Rngs(0)))
    one_line_error(lambda: step(bare, None, (X, Y)), "trainable=MLP", "Trainable(model)")
