"""Gate initialisation from the SVD spectrum: hand-computed values, the clip-mask start, bad input."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp

X = jax.random.normal(jax.random.key(7), (4, 3, 12))
CLIP = fp.Plan(gate=fp.GateConfig(eval_mask="clip"))


class Dense2(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="fc2")(jnp.tanh(nn.Dense(8, name="fc1")(x)))


class Twin(nn.Module):
    """Dense2 factorized at full rank, gated, with the 'clip' eval mask."""

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = fp.FactorizedDense(8, rank=8, plan=CLIP, name="fc1")(x, deterministic)
        return fp.FactorizedDense(5, rank=5, plan=CLIP, name="fc2")(jnp.tanh(x), deterministic)


def test_component_scales_are_the_singular_values_after_factorize():
    kernel = jax.random.normal(jax.random.key(0), (6, 4))
    f = fp.factorize(kernel)
    np.testing.assert_allclose(fp.component_scales(f["P"], f["Q"]), np.linalg.svd(kernel, compute_uv=False), rtol=1e-5)
    # Hand-made factors: |P[:, k]| * |Q[k, :]|.
    p = np.array([[3.0, 0.0], [4.0, 1.0]])  # column norms 5, 1
    q = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # row norms 1, 2
    np.testing.assert_allclose(fp.component_scales(p, q), [5.0, 2.0])


def test_spectral_log_alpha_hand_computed():
    # low + (high - low) * s / max(s) with low 2, high 8: s / max = 1, 0.5, 0.25, 0.
    np.testing.assert_allclose(fp.spectral_log_alpha([4.0, 2.0, 1.0, 0.0], 2.0, 8.0), [8.0, 5.0, 3.5, 2.0])
    np.testing.assert_allclose(fp.spectral_log_alpha([0.0, 0.0], 2.0, 8.0), [8.0, 8.0])  # nothing to rank: open
    np.testing.assert_allclose(fp.spectral_log_alpha([3.0, 1.0], 4.0, 4.0), [4.0, 4.0])  # a constant start


def test_spectral_gates_order_the_gates_and_start_at_the_pretrained_model():
    dense = Dense2().init(jax.random.key(0), X)["params"]
    twin = Twin().init(jax.random.key(1), X)["params"]
    warm = fp.spectral_gates(fp.factorize_params(dense, twin), 2.5, 8.0)
    for name in ("fc1", "fc2"):
        la = np.asarray(warm[name]["log_alpha"])
        s = np.linalg.svd(np.asarray(dense[name]["kernel"]), compute_uv=False)
        np.testing.assert_allclose(la, 2.5 + 5.5 * s / s[0], rtol=1e-5)
        assert la[0] == pytest.approx(8.0) and np.all(np.diff(la) <= 0)
        chex.assert_trees_all_equal(warm[name]["P"], fp.factorize_params(dense, twin)[name]["P"])
    # Every gate above the clip mask's open point (2.40): eval is exactly the dense model.
    ref = Dense2().apply({"params": dense}, X)
    chex.assert_trees_all_close(Twin().apply({"params": warm}, X), ref, atol=1e-5)
    # ... and the sampled gates shut the small components more often than the large ones.
    keys = jax.random.split(jax.random.key(3), 2000)
    z = jax.vmap(lambda k: fp.sample(k, warm["fc1"]["log_alpha"]))(keys)
    below_one = np.asarray(jnp.mean(z < 1.0, axis=0))
    assert below_one[0] < below_one[-1]


def test_spectral_gates_leave_params_untouched():
    dense = Dense2().init(jax.random.key(0), X)["params"]
    warm = fp.factorize_params(dense, Twin().init(jax.random.key(1), X)["params"])
    before = jax.tree.map(np.array, warm)
    fp.spectral_gates(warm, 2.5, 8.0)
    chex.assert_trees_all_equal(warm, before)


def test_spectral_bad_input_names_the_value():
    with pytest.raises(ValueError, match=r"\(low, high\)=\(8.0, 2.0\)"):
        fp.spectral_log_alpha([1.0], 8.0, 2.0)
    with pytest.raises(ValueError, match="scales must be"):
        fp.spectral_log_alpha([1.0, -1.0], 2.0, 8.0)
    with pytest.raises(ValueError, match="no gated factorized layer"):
        fp.spectral_gates(Dense2().init(jax.random.key(0), X)["params"], 2.5, 8.0)
    with pytest.raises(ValueError, match="nested mapping"):
        fp.spectral_gates([1, 2], 2.5, 8.0)
