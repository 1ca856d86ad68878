"""Unstructured and block L0 reach a 0.5 target on a toy problem within 0.03.

A linear regression ``y = x @ W_true`` fitted by a gated [16, 16] layer (no bias), trained as the library's
train step trains (flaxprune/training/steps.py): the MSE plus the Lagrangian penalty on the expected
sparsity, weights, gates and multipliers stepped by one ``flop_optimizer``, gate samples from
``fold_in(key, step)``, the target ramped from 0 to 0.5. W_true has exact zeros: 40% of its weights for the
per-weight gates (so the constraint has to prune the least useful 10% of the rest too), half of its 4 x 4
blocks for the block gates (each block is 1/16 of the matrix, so only exactly 8 shut blocks are within 0.03).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxprune as fp
from flaxprune.gates import deterministic_mask
from flaxprune.lagrangian import flop_optimizer, init_multipliers, penalty, target_schedule
from flaxprune.layers import BlockGatedDense, WeightGatedDense
from flaxprune.size import expected_sparsity, hard_sparsity

N, BATCH, STEPS, WARMUP, TARGET = 16, 128, 1200, 300, 0.5
PLAN = fp.Plan()


class Toy(nn.Module):
    block: tuple | None = None

    @nn.compact
    def __call__(self, x, deterministic):
        if self.block is None:
            layer = WeightGatedDense(N, use_bias=False, plan=PLAN, name="W")
        else:
            layer = BlockGatedDense(N, block=self.block, use_bias=False, plan=PLAN, name="W")
        return layer(x, deterministic)


def _problem(unit_mask, seed):
    k = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(k[0], (BATCH, N))
    w_true = np.asarray(jax.random.normal(k[1], (N, N))) * unit_mask
    return x, x @ jnp.asarray(w_true, jnp.float32)


def _train(block, x, y, seed=0):
    model = Toy(block)
    key = jax.random.key(seed + 100)
    params = model.init(jax.random.key(seed + 1), x, True)["params"]
    trainable = {"params": params, "lagrangian": init_multipliers()}
    tx = flop_optimizer(learning_rate=1e-2, gate_learning_rate=1e-1, lambda_learning_rate=1e-2)
    target_fn = target_schedule(TARGET, WARMUP)

    def loss_fn(trainable, step):
        rngs = {"gates": jax.random.fold_in(key, step)}
        mse = jnp.mean((model.apply({"params": trainable["params"]}, x, False, rngs=rngs) - y) ** 2)
        s = expected_sparsity(trainable["params"], PLAN.gate)
        return mse + penalty(s, target_fn(step), trainable["lagrangian"])

    def step(i, carry):
        trainable, opt_state = carry
        grads = jax.grad(loss_fn)(trainable, i)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    run = jax.jit(lambda t, o: jax.lax.fori_loop(0, STEPS, step, (t, o)))
    trainable, _ = run(trainable, tx.init(trainable))
    return model, trainable["params"]


def _mse(model, params, x, y):
    return float(jnp.mean((model.apply({"params": params}, x, True) - y) ** 2))


def test_unstructured_l0_reaches_half_sparsity_within_0_03():
    rng = np.random.default_rng(0)
    zero = (rng.permutation(N * N) < round(0.4 * N * N)).reshape(N, N)
    x, y = _problem(~zero, seed=0)
    _, params = _train(None, x, y)
    got = float(hard_sparsity(params, PLAN.gate))
    assert abs(got - TARGET) <= 0.03, got
    assert abs(float(expected_sparsity(params, PLAN.gate)) - TARGET) <= 0.03
    # the gates shut are mostly the weights W_true does not use
    shut = np.asarray(deterministic_mask(params["W"]["log_alpha_weight"].reshape(-1))).reshape(N, N) == 0
    assert np.mean(shut[zero]) >= 0.9, np.mean(shut[zero])


def test_block_l0_reaches_half_sparsity_within_0_03():
    rng = np.random.default_rng(0)
    zero_blocks = (rng.permutation(16) < 8).reshape(4, 4)
    x, y = _problem(np.kron(~zero_blocks, np.ones((4, 4))), seed=0)
    model, params = _train((4, 4), x, y)
    got = float(hard_sparsity(params, PLAN.gate))
    assert abs(got - TARGET) <= 0.03, got  # 1/16 per block: exactly 8 of 16 blocks shut
    shut = np.asarray(deterministic_mask(params["W"]["log_alpha_block"].reshape(-1))).reshape(4, 4) == 0
    np.testing.assert_array_equal(shut, zero_blocks)  # the blocks shut are the zero blocks of W_true
    assert _mse(model, params, x, y) < 1e-2 * float(jnp.mean(y**2))  # and the rest fits y
