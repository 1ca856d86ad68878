"""Compaction: dropping closed components from params and optimizer state while the model stays gated."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.compaction import compaction
from flaxprune.models import SRUConfig, SRULanguageModel

CFG = SRUConfig(vocab_size=11, d_model=6, n_layers=2, rank=4, embed_dim=5, dropout=0.0)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 7)), jnp.int32)


def init(cfg=CFG):
    model = SRULanguageModel(cfg)
    keys = {"params": jax.random.key(0), "gates": jax.random.key(1), "dropout": jax.random.key(2)}
    return model, model.init(keys, TOKENS, model.initial_carry(2))["params"]


def with_gates(params, layer0, layer1):
    """Sets layer 0's input gates and layer 1's component gates."""
    params = jax.tree.map(lambda a: a, params)
    params["layers_0"]["W"]["log_alpha"] = jnp.asarray(layer0, jnp.float32)
    params["layers_1"]["W"]["log_alpha"] = jnp.asarray(layer1, jnp.float32)
    return params


CLOSED, OPEN = -12.0, 6.0  # P(z != 0) ~ 1e-5 and ~ 1


def closed_some():
    _, params = init()
    return with_gates(params, [OPEN, CLOSED, OPEN, CLOSED, OPEN], [CLOSED, OPEN, OPEN, CLOSED])


def test_drops_the_closed_components_and_keeps_the_gated_structure():
    params = closed_some()
    cut = compaction(params, CFG, threshold=1e-3)
    assert cut.dropped == {"layers_0/W": (5, 3), "layers_1/W": (4, 2)}
    small = cut.apply(params)
    w0, w1 = small["layers_0"]["W"], small["layers_1"]["W"]
    np.testing.assert_array_equal(w0["kernel"], np.asarray(params["layers_0"]["W"]["kernel"])[[0, 2, 4]])
    np.testing.assert_array_equal(w1["P"], np.asarray(params["layers_1"]["W"]["P"])[:, [1, 2]])
    np.testing.assert_array_equal(w1["Q"], np.asarray(params["layers_1"]["W"]["Q"])[[1, 2]])
    np.testing.assert_array_equal(w1["log_alpha"], [OPEN, OPEN])
    # The compacted config builds exactly these shapes, gates included.
    _, fresh = init(cut.config)
    chex.assert_trees_all_equal_shapes(jax.tree.map(jnp.asarray, small), fresh)
    assert cut.config.plan.spec("layers_0/W") == fp.InputGatedSpec(keep=(0, 2, 4), gated=True)
    assert cut.config.plan.spec("layers_1/W") == fp.FactorizedSpec(rank=2, gated=True)


def test_compacted_model_gives_the_same_eval_outputs_and_sparsity():
    params = closed_some()
    cut = compaction(params, CFG, threshold=1e-3)
    small = jax.tree.map(jnp.asarray, cut.apply(params))
    model, small_model = SRULanguageModel(CFG), SRULanguageModel(cut.config)
    carry = model.initial_carry(2)
    want = model.apply({"params": params}, TOKENS, carry)[0]
    got = small_model.apply({"params": small}, TOKENS, carry)[0]
    chex.assert_trees_all_close(got, want, atol=1e-6)
    reference = fp.prunable_params(params)
    assert float(fp.hard_sparsity(small, cut.config, reference=reference)) == float(fp.hard_sparsity(params, CFG))
    # The expected size loses only what the dropped gates still held: less than threshold x their cost.
    moved = float(fp.expected_sparsity(small, cut.config, reference=reference) - fp.expected_sparsity(params, CFG))
    dropped_cost = 2 * 4 * 6 + 2 * (6 + 3 * 6)  # layer 0: 2 inputs x out (4 blocks of d=6); layer 1: 2 x (in + out)
    assert 0 < moved < 1e-3 * dropped_cost / reference
    # And shrink gives the same reduced model from either: params, plan and outputs.
    a, a_cfg = fp.shrink(params, CFG)
    b, b_cfg = fp.shrink(small, cut.config)
    chex.assert_trees_all_close(a, b)
    assert a_cfg == b_cfg
    reduced = SRULanguageModel(b_cfg).apply({"params": b}, TOKENS, carry)[0]
    chex.assert_trees_all_close(reduced, want, atol=1e-6)


def test_shrink_after_two_compactions_gives_the_gated_outputs():
    params = closed_some()
    first = compaction(params, CFG, threshold=1e-3)
    small = first.apply(params)
    small["layers_0"]["W"]["log_alpha"] = np.asarray([OPEN, CLOSED, OPEN], np.float32)  # inputs 0, 2, 4 -> 0, 4
    second = compaction(small, first.config, threshold=1e-3)
    smaller = jax.tree.map(jnp.asarray, second.apply(small))
    carry = SRULanguageModel(CFG).initial_carry(2)
    want = SRULanguageModel(second.config).apply({"params": smaller}, TOKENS, carry)[0]
    reduced, reduced_cfg = fp.shrink(smaller, second.config)
    assert reduced_cfg.plan.spec("layers_0/W").keep == (0, 4)
    got = SRULanguageModel(reduced_cfg).apply({"params": reduced}, TOKENS, carry)[0]
    chex.assert_trees_all_close(got, want, atol=1e-6)


def test_optimizer_state_is_cut_at_the_same_indices():
    params = closed_some()
    tx = fp.flop_optimizer(1e-3, 1e-2, 1e-2)
    trainable = {"params": params, "lagrangian": fp.init_multipliers()}
    opt_state = tx.init(trainable)
    # Give the moments recognisable values: a few real updates.
    for _ in range(2):
        grads = jax.tree.map(lambda a: jnp.ones_like(a) * jnp.arange(a.size, dtype=a.dtype).reshape(a.shape), trainable)
        _, opt_state = tx.update(grads, opt_state, trainable)
    cut = compaction(params, CFG, threshold=1e-3)
    new_trainable = cut.apply(trainable, prefix=("params",))
    new_state = cut.apply(opt_state, prefix=("params",))
    # The cut state has the structure and shapes of a fresh state of the compacted model.
    chex.assert_trees_all_equal_shapes(jax.tree.map(jnp.asarray, new_state), tx.init(new_trainable))
    mu = [s for s in jax.tree_util.tree_leaves_with_path(new_state) if "mu" in jax.tree_util.keystr(s[0])]
    p_mu = [a for path, a in mu if jax.tree_util.keystr(path).endswith("['layers_1']['W']['P']")]
    old = [a for path, a in jax.tree_util.tree_leaves_with_path(opt_state)
           if "mu" in jax.tree_util.keystr(path) and jax.tree_util.keystr(path).endswith("['layers_1']['W']['P']")]
    assert len(p_mu) == len(old) == 1
    np.testing.assert_array_equal(p_mu[0], np.asarray(old[0])[:, [1, 2]])
    # Scalars (step counts) are untouched.
    counts = [a for path, a in jax.tree_util.tree_leaves_with_path(new_state) if "count" in jax.tree_util.keystr(path)]
    assert counts and all(np.shape(c) == () for c in counts)


def test_nothing_to_drop_returns_the_config_itself():
    _, params = init()
    cut = compaction(params, CFG, threshold=1e-3)
    assert cut.dropped == {} and cut.config is CFG
    chex.assert_trees_all_equal(cut.apply(params), params)


def test_a_layer_keeps_its_most_open_component():
    _, params = init()
    params = with_gates(params, [OPEN] * 5, [CLOSED, CLOSED - 1, CLOSED + 2, CLOSED])
    cut = compaction(params, CFG, threshold=1e-3)
    assert cut.dropped == {"layers_1/W": (4, 1)}
    np.testing.assert_array_equal(cut.apply(params)["layers_1"]["W"]["log_alpha"], [CLOSED + 2])


def test_compacting_twice_composes_the_kept_inputs():
    params = closed_some()
    first = compaction(params, CFG, threshold=1e-3)
    small = first.apply(params)
    small["layers_0"]["W"]["log_alpha"] = np.asarray([OPEN, CLOSED, OPEN], np.float32)  # inputs 0, 2, 4 -> 0, 4
    second = compaction(small, first.config, threshold=1e-3)
    assert second.config.plan.spec("layers_0/W").keep == (0, 4)
    smaller = jax.tree.map(jnp.asarray, second.apply(small))
    _, fresh = init(second.config)
    chex.assert_trees_all_equal_shapes(smaller, fresh)


@pytest.mark.parametrize("threshold", [0, 1, -0.1, float("nan"), True, "1e-3"])
def test_bad_threshold_is_an_error(threshold):
    _, params = init()
    with pytest.raises(ValueError, match="threshold"):
        compaction(params, CFG, threshold=threshold)


def test_nan_gate_is_an_error_naming_it():
    params = closed_some()
    params["layers_1"]["W"]["log_alpha"] = params["layers_1"]["W"]["log_alpha"].at[0].set(jnp.nan)
    with pytest.raises(ValueError, match="layers_1/W"):
        compaction(params, CFG, threshold=1e-3)


def test_ungated_model_is_left_alone():
    cfg = dataclasses.replace(CFG, gated=False)
    _, params = init(cfg)
    assert compaction(params, cfg, threshold=0.5).dropped == {}


def test_bad_reference_is_an_error():
    params = closed_some()
    with pytest.raises(ValueError, match="reference=0"):
        fp.hard_sparsity(params, CFG, reference=0)
