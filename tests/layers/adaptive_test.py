"""Tests for flaxprune.layers.adaptive: adaptive embedding / softmax with FLOP gates."""

from __future__ import annotations

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxprune.gates import deterministic_mask
from flaxprune.layers.adaptive_layout import ADAPTIVE_LAYOUT
from flaxprune.layers.adaptive import (
    AdaptiveEmbedding,
    AdaptiveSoftmax,
    AdaptiveSpec,
    adaptive_clusters,
    nll,
)
from flaxprune.layers.factorized import FactorizedSpec
from flaxprune.plan import Plan

# Clusters [0, 3), [3, 6), [6, 10) with 8, 4, 2 dims.
KW = dict(n_token=10, d_embed=8, d_proj=4, cutoffs=(3, 6), div_val=2)
STARTS, SIZES, DIMS = (0, 3, 6), (3, 3, 4), (8, 4, 2)
IDS = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)  # every token, once
GATE = Plan().gate


def _init(model, *args):
    return model.init({"params": jax.random.key(0)}, *args, deterministic=True)


def _eval(model, variables, *args):
    return jax.jit(functools.partial(model.apply, deterministic=True))(variables, *args)


def _spread_log_alphas(node, seed=1):
    """Gives each log_alpha_i a spread so the eval mask has zeros and distinct soft values."""
    node = dict(node)
    rng = np.random.default_rng(seed)
    for i, d in enumerate(DIMS):
        if f"log_alpha_{i}" in node:
            node[f"log_alpha_{i}"] = jnp.asarray(rng.normal(-2.0, 2.0, d), jnp.float32)
    return node


def _prune_log_alphas(node):
    """Cluster 0 keeps 5 of 8 dims, cluster 1 none (dim 0), cluster 2 one of 2."""
    node = dict(node)
    la0 = np.linspace(0.5, 3.0, 8)
    la0[[1, 4, 6]] = -10.0
    node["log_alpha_0"] = jnp.asarray(la0, jnp.float32)
    node["log_alpha_1"] = jnp.full((4,), -10.0, jnp.float32)
    node["log_alpha_2"] = jnp.asarray([-10.0, 2.0], jnp.float32)
    return node


def _np_mask(node, i):
    return np.asarray(deterministic_mask(node[f"log_alpha_{i}"], GATE), np.float64)


def _n_params(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


# --- construction ---------------------------------------------------------------


def test_param_shapes():
    emb = _init(AdaptiveEmbedding(**KW), IDS)["params"]
    sm = _init(AdaptiveSoftmax(**KW), jnp.zeros((2, 4)))["params"]
    for i, (n, d) in enumerate(zip(SIZES, DIMS)):
        for node in (emb, sm):
            chex.assert_shape(node[f"embedding_{i}"], (n, d))
            chex.assert_shape(node[f"projection_{i}"], (d, 4))
            chex.assert_shape(node[f"log_alpha_{i}"], (d,))
            assert node[f"log_alpha_{i}"].dtype == jnp.float32
        chex.assert_shape(sm[f"bias_{i}"], (n,))
    chex.assert_shape(sm["cluster_kernel"], (4, 2))
    chex.assert_shape(sm["cluster_bias"], (2,))
    assert len(emb) == 9 and len(sm) == 14
    plain = _init(AdaptiveEmbedding(**KW, gated=False), IDS)["params"]
    assert sorted(plain) == sorted(k for k in emb if not k.startswith("log_alpha"))


def test_single_cluster_softmax_has_no_cluster_logits():
    sm = AdaptiveSoftmax(n_token=5, d_embed=3, d_proj=4)
    variables = _init(sm, jnp.ones((4,)))
    assert sorted(variables["params"]) == ["bias_0", "embedding_0", "log_alpha_0", "projection_0"]
    chex.assert_trees_all_close(jax.nn.logsumexp(_eval(sm, variables, jnp.ones((4,)))), 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "override, name",
    [
        (dict(cutoffs=(6, 3)), "cutoffs"),
        (dict(cutoffs=(3, 10)), "cutoffs"),
        (dict(cutoffs=(0, 3)), "cutoffs"),
        (dict(div_val=0.5), "div_val"),
        (dict(d_embed=2), "d_embed"),  # 2 // 2**2 = 0 dims for cluster 2
        (dict(d_proj=0), "d_proj"),
        (dict(n_token=0, cutoffs=()), "n_token"),
    ],
)
def test_bad_arguments_raise(override, name):
    for cls in (AdaptiveEmbedding, AdaptiveSoftmax):
        with pytest.raises(ValueError, match=name):
            _init(cls(**{**KW, **override}), IDS if cls is AdaptiveEmbedding else jnp.ones((4,)))


def test_adaptive_clusters_and_spec_validation():
    assert adaptive_clusters(10, 8, (3, 6), 2) == ((0, 3, 8), (3, 3, 4), (6, 4, 2))
    assert adaptive_clusters(10, 8) == ((0, 10, 8),)
    with pytest.raises(ValueError, match="dims"):
        AdaptiveSpec(dims=(2, -1))
    with pytest.raises(ValueError, match="AdaptiveSpec"):
        _init(AdaptiveEmbedding(**KW, plan=Plan().with_specs({"": AdaptiveSpec(dims=(8, 4))})), IDS)
    with pytest.raises(ValueError, match="expected an AdaptiveSpec"):
        _init(AdaptiveEmbedding(**KW, plan=Plan().with_specs({"": FactorizedSpec(rank=2)})), IDS)


# --- forward ----------------------------------------------------------------------


def _np_embed(node, ids):
    out = np.zeros(ids.shape + (4,))
    for idx, t in np.ndenumerate(np.asarray(ids)):
        i = int(np.searchsorted((3, 6), t, side="right"))
        e = np.asarray(node[f"embedding_{i}"], np.float64)[t - STARTS[i]] * _np_mask(node, i)
        out[idx] = e @ np.asarray(node[f"projection_{i}"], np.float64)
    return out


def test_embedding_matches_hand_computation_in_eval_mode():
    model = AdaptiveEmbedding(**KW)
    node = _spread_log_alphas(_init(model, IDS)["params"])
    out = _eval(model, {"params": node}, IDS)
    chex.assert_shape(out, (2, 5, 4))
    expected = _np_embed(node, IDS)
    chex.assert_trees_all_close(out / math.sqrt(4), expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(out, expected * 2.0, rtol=1e-5, atol=1e-6)  # sqrt(d_proj) = 2
    assert np.count_nonzero(_np_mask(node, 0)) < 8  # the mask really zeroed some dims


def test_embedding_ids_outside_vocab_embed_to_zero():
    model = AdaptiveEmbedding(**KW)
    variables = _init(model, IDS)
    out = _eval(model, variables, jnp.asarray([-1, 10, 2]))
    chex.assert_trees_all_close(out[:2], jnp.zeros((2, 4)))
    assert np.all(np.asarray(out[2]) != 0)


def _np_log_probs(node, h):
    """log p(t | h) for every t, cluster by cluster, from the definition."""
    h = np.asarray(h, np.float64)

    def logits(i):
        z = _np_mask(node, i)
        proj = np.asarray(node[f"projection_{i}"], np.float64)
        emb = np.asarray(node[f"embedding_{i}"], np.float64)
        return ((h @ proj.T) * z) @ emb.T + np.asarray(node[f"bias_{i}"], np.float64)

    def log_softmax(x):
        return x - np.log(np.sum(np.exp(x - x.max()))) - x.max()

    clusters = h @ np.asarray(node["cluster_kernel"], np.float64) + np.asarray(node["cluster_bias"], np.float64)
    head = log_softmax(np.concatenate([logits(0), clusters]))
    return np.concatenate([head[:3], head[3] + log_softmax(logits(1)), head[4] + log_softmax(logits(2))])


def _softmax_node(seed=2):
    model = AdaptiveSoftmax(**KW)
    node = _spread_log_alphas(_init(model, jnp.ones((4,)))["params"], seed)
    rng = np.random.default_rng(seed)
    for k in ("bias_0", "bias_1", "bias_2", "cluster_bias"):
        node[k] = jnp.asarray(rng.normal(0.0, 0.5, node[k].shape), jnp.float32)
    return model, node


def test_softmax_normalizes_and_matches_hand_computation():
    model, node = _softmax_node()
    hidden = jax.random.normal(jax.random.key(3), (2, 3, 4))
    lp = _eval(model, {"params": node}, hidden)
    chex.assert_shape(lp, (2, 3, 10))
    chex.assert_trees_all_close(jax.nn.logsumexp(lp, axis=-1), jnp.zeros((2, 3)), atol=1e-5)
    expected = _np_log_probs(node, hidden[1, 2])
    for t in (1, 4, 8):  # one token of each cluster
        np.testing.assert_allclose(lp[1, 2, t], expected[t], rtol=1e-5, atol=1e-5)


def test_nll_gathers_targets():
    log_probs = jnp.log(jnp.asarray([[[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]]))
    targets = jnp.asarray([[2, 1]])
    out = jax.jit(nll)(log_probs, targets)
    chex.assert_shape(out, (1, 2))
    chex.assert_trees_all_close(out, -jnp.log(jnp.asarray([[0.7, 0.25]])), rtol=1e-6)


def test_gradient_reaches_every_log_alpha_through_the_sample():
    model = AdaptiveEmbedding(**KW)
    params = _init(model, IDS)["params"]

    @jax.jit
    def loss(p):
        out = model.apply({"params": p}, IDS, deterministic=False, rngs={"gates": jax.random.key(5)})
        return jnp.sum(out**2)

    grads = jax.grad(loss)(params)
    for i in range(3):
        assert np.any(np.asarray(grads[f"log_alpha_{i}"]) != 0), i


def test_missing_gates_rng_raises():
    model = AdaptiveEmbedding(**KW)
    variables = _init(model, IDS)
    with pytest.raises(ValueError, match="rngs"):
        model.apply(variables, IDS, deterministic=False)
    sm = AdaptiveSoftmax(**KW)
    with pytest.raises(ValueError, match="rngs"):
        sm.apply(_init(sm, jnp.ones((4,))), jnp.ones((4,)), deterministic=False)


# --- tied --------------------------------------------------------------------------


class TiedLM(nn.Module):
    """A parent that shares the embedding with the softmax."""

    plan: Plan = Plan()

    def setup(self):
        self.embed = AdaptiveEmbedding(**KW, plan=self.plan)
        self.softmax = AdaptiveSoftmax(**KW, tied=self.embed, plan=self.plan)

    def __call__(self, ids, deterministic=None):
        embeddings = self.embed(ids, deterministic=deterministic)  # [..., d_proj]
        return embeddings, self.softmax(embeddings * 0.5, deterministic=deterministic)


def test_tied_softmax_owns_only_biases_and_cluster_logits():
    params = _init(TiedLM(), IDS)["params"]
    assert sorted(params["softmax"]) == ["bias_0", "bias_1", "bias_2", "cluster_bias", "cluster_kernel"]
    assert "log_alpha_0" in params["embed"]
    assert not ADAPTIVE_LAYOUT.match(params["softmax"])
    assert ADAPTIVE_LAYOUT.match(params["embed"])


def test_tied_gate_samples_are_separate_but_reproducible():
    model = TiedLM()
    variables = _init(model, IDS)

    train = jax.jit(functools.partial(model.apply, deterministic=False, mutable=["intermediates"]))

    def run(seed):
        out, state = train(variables, IDS, rngs={"gates": jax.random.key(seed)})
        inter = state["intermediates"]
        return out, [(inter["embed"][f"gate_{i}"][0], inter["softmax"][f"gate_{i}"][0]) for i in range(3)]

    (out, first), (out_again, again), (_, other) = run(7), run(7), run(8)
    chex.assert_trees_all_close((out, first), (out_again, again))
    for i in range(3):
        assert not np.allclose(first[i][0], first[i][1]), i  # embedding and softmax draw their own keys
    assert not np.allclose(first[0][0], other[0][0])
    with pytest.raises(ValueError, match="rngs"):
        model.apply(variables, IDS, deterministic=False)


def test_tied_requires_matching_vocabulary():
    class Bad(nn.Module):
        def setup(self):
            self.embed = AdaptiveEmbedding(**KW)
            self.softmax = AdaptiveSoftmax(**{**KW, "cutoffs": (3, 7)}, tied=self.embed)

        def __call__(self, h):
            return self.softmax(h, deterministic=True)

    with pytest.raises(ValueError, match="cutoffs"):
        Bad().init(jax.random.key(0), jnp.ones((4,)))


# --- layout ------------------------------------------------------------------------


def test_groups_cost_per_gate():
    emb = _init(AdaptiveEmbedding(**KW), IDS)["params"]
    groups = ADAPTIVE_LAYOUT.groups(emb)
    assert [g.name for g in groups] == ["log_alpha_0", "log_alpha_1", "log_alpha_2"]
    assert [g.cost_per_gate for g in groups] == [n + 4 for n in SIZES]
    sm = _init(AdaptiveSoftmax(**KW), jnp.ones((4,)))["params"]
    assert ADAPTIVE_LAYOUT.match(sm)
    assert [g.cost_per_gate for g in ADAPTIVE_LAYOUT.groups(sm)] == [n + 4 for n in SIZES]
    assert ADAPTIVE_LAYOUT.groups(_init(AdaptiveEmbedding(**KW, gated=False), IDS)["params"]) == []


def test_rows():
    emb = _prune_log_alphas(_init(AdaptiveEmbedding(**KW), IDS)["params"])
    rows = ADAPTIVE_LAYOUT.rows("embed", emb, GATE)
    assert [r.kind for r in rows] == ["adaptive[0]", "adaptive[1]", "adaptive[2]"]
    assert [r.rank for r in rows] == [5, 0, 1]
    assert [r.full_rank for r in rows] == list(DIMS)
    assert [r.params for r in rows] == [5 * 7, 0, 1 * 8]
    assert [r.flops_per_token for r in rows] == [2 * 5 * 4, 0, 2 * 1 * 4]
    sm = _prune_log_alphas(_init(AdaptiveSoftmax(**KW), jnp.ones((4,)))["params"])
    rows = ADAPTIVE_LAYOUT.rows("softmax", sm, GATE)
    cluster = 4 * 2 + 2  # cluster 0's row also holds the cluster logits: cluster_kernel [4, 2], cluster_bias [2]
    assert [r.params for r in rows] == [5 * 7 + 3 + cluster, 3, 1 * 8 + 4]
    assert [r.flops_per_token for r in rows] == [2 * 5 * 7 + 2 * 4 * 2, 0, 2 * 1 * 8]
    assert [r.shape for r in rows] == [(3, 4), (3, 4), (4, 4)]


def _shrunk(node, path):
    new_node, spec = ADAPTIVE_LAYOUT.shrink(path, node, GATE)
    assert spec == AdaptiveSpec(dims=(5, 0, 1), gated=False)
    assert _n_params(new_node) < _n_params(node)
    assert not any(k.startswith("log_alpha") for k in new_node)
    ADAPTIVE_LAYOUT.check(path, new_node, spec)
    return new_node, Plan().with_specs({path: spec})


def _assert_same_shapes(model, args, params):
    shapes = jax.eval_shape(lambda: _init(model, *args)["params"])
    chex.assert_trees_all_equal_shapes(shapes, params)


def test_shrink_embedding_is_exact():
    model = AdaptiveEmbedding(**KW)
    node = _prune_log_alphas(_init(model, IDS)["params"])
    new_node, plan = _shrunk(node, "")
    small = AdaptiveEmbedding(**KW, plan=plan)
    _assert_same_shapes(small, (IDS,), new_node)
    assert "embedding_1" not in new_node and "projection_1" not in new_node
    chex.assert_trees_all_close(_eval(small, {"params": new_node}, IDS), _eval(model, {"params": node}, IDS), atol=1e-5)


def test_shrink_tied_is_exact():
    model = TiedLM()
    params = dict(_init(model, IDS)["params"])
    params["embed"] = _prune_log_alphas(params["embed"])
    new_embed, plan = _shrunk(params["embed"], "embed")
    new_params = {**params, "embed": new_embed}
    small = TiedLM(plan=plan)
    _assert_same_shapes(small, (IDS,), new_params)
    assert _n_params(new_params) < _n_params(params)
    chex.assert_trees_all_close(
        _eval(small, {"params": new_params}, IDS), _eval(model, {"params": params}, IDS), atol=1e-5
    )


def test_shrink_untied_softmax_is_exact():
    model, node = _softmax_node()
    node = _prune_log_alphas(node)
    new_node, plan = _shrunk(node, "")
    assert {"bias_1", "cluster_kernel", "cluster_bias"} <= set(new_node)
    small = AdaptiveSoftmax(**KW, plan=plan)
    _assert_same_shapes(small, (jnp.ones((4,)),), new_node)
    hidden = jax.random.normal(jax.random.key(4), (3, 4))
    chex.assert_trees_all_close(
        _eval(small, {"params": new_node}, hidden), _eval(model, {"params": node}, hidden), atol=1e-5
    )
    assert ADAPTIVE_LAYOUT.rows("", new_node, GATE)[1].params == 3  # cluster 1: its bias only


def test_shrunk_node_still_matches_when_cluster_0_is_gone():
    node = dict(_init(AdaptiveEmbedding(**KW), IDS)["params"])
    node["log_alpha_0"] = jnp.full((8,), -10.0)
    new_node, spec = ADAPTIVE_LAYOUT.shrink("", node, GATE)
    assert spec.dims[0] == 0 and "embedding_0" not in new_node
    assert ADAPTIVE_LAYOUT.match(new_node)
    ADAPTIVE_LAYOUT.check("", new_node, spec)


@pytest.mark.parametrize(
    "spec",
    [
        FactorizedSpec(rank=5),
        AdaptiveSpec(dims=(4, 0, 1)),  # wrong dims
        AdaptiveSpec(dims=(5, 3, 1)),  # a dim-0 cluster expected to have params
        AdaptiveSpec(dims=(5, 0, 1), gated=True),  # gates that are gone
        AdaptiveSpec(dims=(5, 0)),  # too few clusters
    ],
)
def test_check_raises_on_mismatched_spec(spec):
    node = _prune_log_alphas(_init(AdaptiveEmbedding(**KW), IDS)["params"])
    new_node, _ = ADAPTIVE_LAYOUT.shrink("embed", node, GATE)
    with pytest.raises(ValueError, match="do not match the plan at 'embed'"):
        ADAPTIVE_LAYOUT.check("embed", new_node, spec)


def test_check_on_gated_node():
    node = _init(AdaptiveEmbedding(**KW), IDS)["params"]
    ADAPTIVE_LAYOUT.check("e", node, AdaptiveSpec(dims=DIMS, gated=True))
    with pytest.raises(ValueError, match="gated"):
        ADAPTIVE_LAYOUT.check("e", node, AdaptiveSpec(dims=DIMS, gated=False))


def test_plan_dims_must_fit_the_clusters():
    plan = Plan().with_specs({"": AdaptiveSpec(dims=(8, 5, 2))})  # cluster 1 has d_embed // 2 = 4 dims
    with pytest.raises(ValueError, match=r"keeps 5 dims of cluster 1, which has 4"):
        _init(AdaptiveEmbedding(**KW, plan=plan), IDS)
    with pytest.raises(ValueError, match=r"keeps 5 dims of cluster 1, which has 4"):
        _init(AdaptiveSoftmax(**KW, plan=plan), jnp.ones((4,)))


def test_head_row_holds_the_cluster_logits():
    sm = _init(AdaptiveSoftmax(**KW), jnp.ones((4,)))["params"]
    sm = {k: jnp.full_like(v, 9.0) if k.startswith("log_alpha") else v for k, v in sm.items()}  # every gate open
    rows = ADAPTIVE_LAYOUT.rows("softmax", sm, GATE)
    cluster = 4 * 2 + 2  # cluster_kernel [d_proj, clusters - 1] and cluster_bias
    assert sum(r.params for r in rows) == _n_params(sm) - sum(DIMS)  # every weight but the gates
    assert rows[0].params == 8 * (3 + 4) + 3 + cluster
    assert rows[0].flops_per_token == 2 * 8 * (3 + 4) + 2 * 4 * 2
