"""flaxprune.agp: the cubic schedule, magnitude masks, and masked weights that stay zero through AdamW."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxprune import agp


@pytest.mark.parametrize(
    "step,expected",
    [
        (0, 0.1), (100, 0.1),  # s_i up to t0
        (200, 0.8 + (0.1 - 0.8) * 0.75**3),  # a quarter of the span: 0.8 - 0.7 * 0.421875 = 0.5046875
        (300, 0.8 - 0.7 * 0.125),  # half: 0.7125
        (500, 0.8), (900, 0.8),  # s_f from t0 + span on
    ],
)
def test_cubic_schedule_at_hand_picked_steps(step, expected):
    got = agp.agp_sparsity(step, initial=0.1, final=0.8, start=100, end=500)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_magnitude_mask_prunes_the_smallest_and_breaks_ties_by_position():
    w = jnp.array([[3.0, -1.0], [0.5, -4.0]])
    np.testing.assert_array_equal(agp.magnitude_mask(w, 0.5), [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(agp.magnitude_mask(jnp.ones(4), 0.5), [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(agp.magnitude_mask(w, 0.0), np.ones((2, 2)))
    assert float(agp.magnitude_mask(jnp.arange(10.0), 0.79).sum()) == 3.0  # floor(7.9) = 7 pruned


def _toy():
    k = jax.random.split(jax.random.key(0), 3)
    params = {"dense": {"kernel": jax.random.normal(k[0], (8, 8)), "bias": jnp.zeros(8)},
              "embed": {"embedding": jax.random.normal(k[1], (5, 8))}}
    x, y = jax.random.normal(k[2], (32, 8)), jax.random.normal(k[1], (32, 8))

    def loss(p):
        h = x @ p["dense"]["kernel"] + p["dense"]["bias"] + p["embed"]["embedding"].sum(0)
        return jnp.mean((h - y) ** 2)

    return params, loss


def _train(tx, params, loss, steps, state=None):
    state = tx.init(params) if state is None else state

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    history = []
    for _ in range(steps):
        params, state = step(params, state)
        history.append((params, state))
    return params, state, history


def test_masked_weights_and_their_moments_stay_exactly_zero_through_every_update():
    params, loss = _toy()
    tx = agp.agp_pruning(optax.adamw(1e-2, weight_decay=1e-2), final_sparsity=0.75, start_step=0, end_step=40,
                         frequency=10)
    final, state, history = _train(tx, params, loss, 80)
    for p, s in history:
        mask = s.masks["dense"]["kernel"]
        assert float(jnp.abs(p["dense"]["kernel"] * (1 - mask)).max()) == 0.0
        adam = s.inner[0]
        for moment in (adam.mu, adam.nu):
            assert float(jnp.abs(moment["dense"]["kernel"] * (1 - mask)).max()) == 0.0
    assert int((final["dense"]["kernel"] == 0).sum()) == 48  # floor(0.75 * 64)
    assert float(agp.mask_sparsity(state.masks, final)) == pytest.approx(0.75)
    assert state.masks["dense"]["bias"].shape == () and state.masks["embed"]["embedding"].shape == ()
    assert bool(jnp.all(final["dense"]["bias"] != 0))  # not prunable: trained as usual
    # The masks only grow, and hold between the due steps.
    pruned = [int((s.masks["dense"]["kernel"] == 0).sum()) for _, s in history]
    assert pruned == sorted(pruned) and pruned[0] == 0 and len(set(pruned[11:20])) == 1


def test_the_last_masks_are_at_the_final_sparsity_when_the_span_is_off_the_frequency_grid():
    params, loss = _toy()
    # Due at 0, 4, 8 on the grid, and at the end, 10: s(8) = 0.5 - 0.5 * 0.2**3 = 0.496 prunes 31 of 64, s(10) 32.
    tx = agp.agp_pruning(optax.adam(1e-2), final_sparsity=0.5, start_step=0, end_step=10, frequency=4)
    _, _, history = _train(tx, params, loss, 12)
    pruned = [int((s.masks["dense"]["kernel"] == 0).sum()) for _, s in history]
    assert pruned[8] == 31 and pruned[9] == 31 and pruned[10] == 32 == pruned[11]


def test_the_wrapped_weights_of_flop_optimizer_keep_masked_moments_at_zero():
    """AGP inside the combined optimizer's partition (``wrap_weights``): the moments it masks are the weights'."""
    from flaxprune.lagrangian import flop_optimizer, init_multipliers

    params, loss = _toy()
    def wrap(inner):
        return agp.agp_pruning(inner, final_sparsity=0.75, start_step=0, end_step=20, frequency=5)

    tx = flop_optimizer(1e-2, 1e-2, 1e-2, wrap_weights=wrap)
    trainable = {"params": params, "lagrangian": init_multipliers()}
    _, state, history = _train(tx, trainable, lambda t: loss(t["params"]), 30)
    final = history[-1][0]["params"]["dense"]["kernel"]
    zero = np.asarray(final == 0)
    assert zero.sum() == 48
    moments = [x for path, x in jax.tree_util.tree_leaves_with_path(state)
               if [getattr(k, "key", None) for k in path][-3:] == ["params", "dense", "kernel"]
               and np.shape(x) == (8, 8)]
    assert len(moments) >= 3  # the mask, Adam's mu and nu
    assert all(np.all(np.asarray(m)[zero] == 0) for m in moments)


def test_resuming_from_the_saved_state_is_exact():
    params, loss = _toy()
    tx = agp.agp_pruning(optax.adam(1e-2), final_sparsity=0.5, start_step=5, end_step=25, frequency=5)
    straight, _, _ = _train(tx, params, loss, 40)
    half, state, _ = _train(tx, params, loss, 17)
    saved = jax.device_get((half, state))  # what a checkpoint holds: plain arrays
    resumed, _, _ = _train(tx, saved[0], loss, 23, state=jax.tree.map(jnp.asarray, saved[1]))
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_update_without_params_is_one_clear_error():
    params, _ = _toy()
    tx = agp.agp_pruning(optax.sgd(0.1), final_sparsity=0.5, start_step=0, end_step=10)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(final_sparsity=1.0), "final_sparsity=1.0"),
        (dict(final_sparsity=-0.1), "final_sparsity=-0.1"),
        (dict(initial_sparsity=0.9), "initial_sparsity=0.9"),
        (dict(start_step=100, end_step=50), "end_step=50"),
        (dict(frequency=0), "frequency=0"),
        (dict(start_step=1.5), "start_step=1.5"),
    ],
)
def test_bad_settings_are_one_line_naming_the_argument(kwargs, message):
    settings = dict(final_sparsity=0.5, start_step=0, end_step=10, **{})
    settings.update(kwargs)
    with pytest.raises(ValueError) as info:
        agp.agp_pruning(optax.sgd(0.1), **settings)
    assert message in str(info.value) and "accepted" in str(info.value) and "\n" not in str(info.value)
