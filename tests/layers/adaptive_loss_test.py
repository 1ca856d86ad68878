"""Tests for flaxprune.layers.adaptive_loss: the adaptive softmax's loss, cluster by cluster."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxprune.layers.adaptive import AdaptiveEmbedding, AdaptiveSoftmax, adaptive_clusters, nll
from flaxprune.layers.adaptive_loss import adaptive_nll, target_clusters

# Clusters [0, 5), [5, 9), [9, 20), [20, 30) with 8, 8, 4, 4 dims (div_val 2 every 2 clusters).
KW = dict(n_token=30, d_embed=8, d_proj=6, cutoffs=(5, 9, 20), div_val=2, div_freq=2)


def test_div_freq_divides_every_few_clusters():
    assert [d for _, _, d in adaptive_clusters(30, 8, (5, 9, 20), 2, 2)] == [8, 8, 4, 4]
    assert [d for _, _, d in adaptive_clusters(30, 8, (5, 9, 20), 2, 1)] == [8, 4, 2, 1]
    # The paper's WikiText-103 bands: d, d, d/4, d/4, d/16, d/16.
    cuts = (10_000, 20_000, 40_000, 60_000, 100_000)
    assert [d for _, _, d in adaptive_clusters(267_735, 2048, cuts, 4, 2)] == [2048, 2048, 512, 512, 128, 128]
    with pytest.raises(ValueError, match="div_freq=0 must be an int >= 1"):
        adaptive_clusters(30, 8, (5,), 2, 0)


def test_target_clusters():
    t = jnp.asarray([0, 4, 5, 8, 9, 19, 20, 29])
    np.testing.assert_array_equal(target_clusters(t, (0, 5, 9, 20)), [0, 0, 1, 1, 2, 2, 3, 3])


def _naive_nll(hidden, targets, weights, kernel, bias, clusters):
    """-log p(t) from the definition, in float64 numpy: p(t) = softmax(head)[cluster] * softmax(l_i)[t - start]."""
    h = np.asarray(hidden, np.float64)
    logits = []
    for emb, proj, mask, b in weights:
        z = np.ones(proj.shape[0]) if mask is None else np.asarray(mask, np.float64)
        logits.append((h @ np.asarray(proj, np.float64).T * z) @ np.asarray(emb, np.float64).T + np.asarray(b))
    head = np.concatenate([logits[0], h @ np.asarray(kernel, np.float64) + np.asarray(bias)], axis=-1)
    head = head - np.log(np.exp(head).sum(-1, keepdims=True))
    out = []
    for row, t in enumerate(np.asarray(targets)):
        i = int(np.searchsorted([s for s, _, _ in clusters][1:], t, side="right"))
        if i == 0:
            out.append(-head[row, t])
            continue
        tail = logits[i][row] - np.log(np.exp(logits[i][row]).sum())
        out.append(-(head[row, clusters[0][1] + i - 1] + tail[t - clusters[i][0]]))
    return np.asarray(out)


def _random_problem(n, seed=0):
    clusters = adaptive_clusters(KW["n_token"], KW["d_embed"], KW["cutoffs"], KW["div_val"], KW["div_freq"])
    rng = np.random.default_rng(seed)
    weights = []
    for i, (_, n_i, d_i) in enumerate(clusters):
        mask = None if i == 1 else rng.uniform(0, 1, d_i) * (rng.uniform(size=d_i) > 0.3)
        weights.append((rng.normal(size=(n_i, d_i)), rng.normal(size=(d_i, KW["d_proj"])) / 3, mask,
                        rng.normal(size=n_i)))
    kernel, bias = rng.normal(size=(KW["d_proj"], len(clusters) - 1)), rng.normal(size=len(clusters) - 1)
    hidden = rng.normal(size=(n, KW["d_proj"]))
    targets = rng.integers(0, KW["n_token"], n)
    return hidden, targets, clusters, weights, kernel, bias


@pytest.mark.parametrize("n, chunk", [(37, 8), (37, 1), (37, 64), (16, 16)])
def test_cluster_wise_loss_equals_the_naive_full_softmax(n, chunk):
    hidden, targets, clusters, weights, kernel, bias = _random_problem(n)
    to_jnp = lambda w: tuple(None if a is None else jnp.asarray(a, jnp.float32) for a in w)  # noqa: E731
    got = jax.jit(adaptive_nll, static_argnames=("clusters", "chunk"))(
        jnp.asarray(hidden, jnp.float32), jnp.asarray(targets), clusters, [to_jnp(w) for w in weights],
        jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32), chunk=chunk)
    np.testing.assert_allclose(got, _naive_nll(hidden, targets, weights, kernel, bias, clusters), rtol=1e-4, atol=1e-4)


def test_a_cluster_cut_to_no_dims_is_its_bias_alone():
    hidden, targets, clusters, weights, kernel, bias = _random_problem(20, seed=1)
    emb, proj, _, b = weights[2]
    weights[2] = (None, None, None, b)
    expected = _naive_nll(hidden, targets, weights[:2] + [(np.zeros_like(emb), proj, None, b)] + weights[3:],
                          kernel, bias, clusters)
    to_jnp = lambda w: tuple(None if a is None else jnp.asarray(a, jnp.float32) for a in w)  # noqa: E731
    got = adaptive_nll(jnp.asarray(hidden, jnp.float32), jnp.asarray(targets), clusters,
                       [to_jnp(w) for w in weights], jnp.asarray(kernel, jnp.float32),
                       jnp.asarray(bias, jnp.float32), chunk=4)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


class _Tied(nn.Module):
    def setup(self):
        self.embed = AdaptiveEmbedding(**KW)
        self.softmax = AdaptiveSoftmax(**KW, tied=self.embed)

    def __call__(self, ids, targets, deterministic, fast):
        h = self.embed(ids, deterministic)
        if fast:
            return self.softmax.nll(h, targets, deterministic, chunk=5)
        return nll(self.softmax(h, deterministic), targets)


def _tied_setup():
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(0, 30, (3, 7)))
    targets = jnp.asarray(rng.integers(0, 30, (3, 7)))
    model = _Tied()
    params = model.init(jax.random.key(0), ids, targets, True, True)["params"]
    return model, params, ids, targets


def test_softmax_nll_and_its_gradient_equal_the_full_log_probs():
    model, params, ids, targets = _tied_setup()
    for deterministic in (True, False):
        def loss(p, fast, deterministic=deterministic):
            out = model.apply({"params": p}, ids, targets, deterministic, fast, rngs={"gates": jax.random.key(5)})
            return out.mean()

        np.testing.assert_allclose(loss(params, True), loss(params, False), rtol=1e-5)
        fast, full = jax.grad(loss)(params, True), jax.grad(loss)(params, False)
        for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(full)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_full_log_probs_sum_to_one_over_the_vocabulary():
    model, params, ids, _ = _tied_setup()

    class LogProbs(_Tied):
        def __call__(self, ids):
            return self.softmax(self.embed(ids, True), True)

    lp = LogProbs().apply({"params": params}, ids)
    assert lp.shape == (3, 7, 30)
    np.testing.assert_allclose(jnp.exp(lp).sum(-1), 1.0, rtol=1e-5)


def test_tied_gates_share_log_alpha_and_draw_independent_samples():
    model, params, ids, targets = _tied_setup()
    assert not any(k.startswith("log_alpha") for k in params["softmax"])  # one set of gates, the embedding's
    _, state = model.apply({"params": params}, ids, targets, False, True, rngs={"gates": jax.random.key(1)},
                           mutable=["intermediates"])
    inter = state["intermediates"]
    for i in range(4):
        (z_embed,), (z_softmax,) = inter["embed"][f"gate_{i}"], inter["softmax"][f"gate_{i}"]
        assert z_embed.shape == z_softmax.shape == params["embed"][f"log_alpha_{i}"].shape
        assert not np.allclose(z_embed, z_softmax)  # own samples
    _, state = model.apply({"params": params}, ids, targets, True, True, mutable=["intermediates"])
    np.testing.assert_array_equal(state["intermediates"]["embed"]["gate_0"][0],
                                  state["intermediates"]["softmax"]["gate_0"][0])  # one eval mask


def test_the_loss_never_holds_every_words_logits():
    """Compiled temp memory of loss + gradient per extra token: O(head) cluster-wise, O(vocabulary) in full."""
    kw = dict(n_token=20_000, d_embed=16, d_proj=16, cutoffs=(1000,), div_val=1)

    class Head(nn.Module):
        fast: bool

        @nn.compact
        def __call__(self, h, t):
            s = AdaptiveSoftmax(**kw, gated=False)
            return (s.nll(h, t, chunk=32) if self.fast else nll(s(h), t)).mean()

    def temp_bytes(fast: bool, n: int) -> int:
        h, t = jnp.ones((n, 16)), jnp.zeros((n,), jnp.int32).at[::7].set(15_000)  # every 7th in the tail
        model = Head(fast)
        params = model.init(jax.random.key(0), h, t)
        grad = jax.jit(lambda p: jax.grad(lambda q: model.apply(q, h, t))(p))
        return grad.lower(params).compile().memory_analysis().temp_size_in_bytes

    per_token = {fast: (temp_bytes(fast, 2048) - temp_bytes(fast, 512)) / 1536 for fast in (True, False)}
    head = 1000 + 1 + 16  # cluster 0's logits, one cluster logit, the hidden state
    assert per_token[False] >= 4 * kw["n_token"]  # the full log-probs: a float per word per token
    assert per_token[True] < 3 * 4 * head, per_token  # a few floats of the head per token, no tail logits
