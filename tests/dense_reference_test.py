"""flaxprune.dense_reference and the SRU ``method`` field: every method measured against the same dense matrices.

The SRU model here has d_model = embed = 16 and two layers, so every W is [16, 48] (768 weights, 1536 in
all). Its factorized layers take the parameter-neutral rank 16 * 48 // 64 = 12, so a factorized W with k
kept components stands for min(64 k, 768) dense weights; an input of the input-gated layer 0 costs 48.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.dense_reference import kept_weights, reference_params, reference_sparsity
from flaxprune.methods import METHODS
from flaxprune.models import SRUConfig, build_model, model_for

OPEN, SHUT = 20.0, -20.0
WEIGHTS_PER_W = 16 * 48
TOKENS = jax.random.randint(jax.random.key(9), (2, 6), 0, 11)
LAYERS = ("layers_0", "layers_1")


@functools.cache
def _model(method, rank=None):
    """The tiny SRU model of ``method``, its config and params.

    The params have the structure ``model.init`` gives (from ``jax.eval_shape``, which only traces: an eager
    init compiles every op of the model, several seconds per method on a small CPU), filled with seeded
    normal values; the diagonal of 'agp_structured' starts at ones as its init does.
    """
    model, config = build_model(
        "sru", vocab_size=11, d_model=16, n_layers=2, embed_dim=16, rank=rank, method=method, block=(4, 4),
        dropout=0.0,
    )
    shapes = jax.eval_shape(model.init, jax.random.key(0), TOKENS, model.initial_carry(2))["params"]
    rng = np.random.default_rng(len(method))

    def fill(path, leaf):
        if path[-1].key == "diag":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype)

    return model, config, jax.tree_util.tree_map_with_path(fill, shapes)


def _pattern(n, shut, seed):
    """[n] log_alpha: ``shut`` randomly placed entries at -20, the rest at +20."""
    la = np.full(n, OPEN, np.float32)
    la[np.random.default_rng(seed).permutation(n)[:shut]] = SHUT
    return la


def _keep(method, params, frac):
    """``params`` edited so that each W keeps ``frac`` of its 768 dense-reference weights, in the method's units."""
    out = {**params}
    for seed, layer in enumerate(LAYERS):
        node = dict(params[layer]["W"])
        if method == "flop" and layer == "layers_0":  # input-gated: 16 inputs of 48 weights each
            node["log_alpha"] = jnp.asarray(_pattern(16, round(16 * (1 - frac)), seed))
        elif method == "flop":  # factorized, 12 components of 64 weights each
            node["log_alpha"] = jnp.asarray(_pattern(12, round(12 * (1 - frac)), seed))
        elif method == "agp":  # exact zeros in the dense kernel
            kernel = np.asarray(node["kernel"]).reshape(-1).copy()
            kernel[np.random.default_rng(seed).permutation(768)[: round(768 * (1 - frac))]] = 0.0
            node["kernel"] = jnp.asarray(kernel.reshape(16, 48))
        elif method == "agp_structured":  # zeros in the learned diagonal (others away from 1, to be folded)
            diag = np.linspace(0.5, 2.0, 12).astype(np.float32)
            diag[np.random.default_rng(seed).permutation(12)[: round(12 * (1 - frac))]] = 0.0
            node["diag"] = jnp.asarray(diag)
        elif method == "l0":  # a gate per weight
            node["log_alpha_weight"] = jnp.asarray(_pattern(768, round(768 * (1 - frac)), seed).reshape(16, 48))
        elif method == "l0_block":  # 48 gates of 4 x 4 = 16 weights
            node["log_alpha_block"] = jnp.asarray(_pattern(48, round(48 * (1 - frac)), seed).reshape(4, 12))
        out[layer] = {**params[layer], "W": node}
    return out


@functools.cache
def _unpruned_logits(method):
    model, _, params = _model(method)
    return _logits(model, params)


def _logits(model, params):
    logits, _ = model.apply({"params": params}, TOKENS, model.initial_carry(2), deterministic=True)
    return np.asarray(logits)


# --- the SRU method field -------------------------------------------------------------------------------------


def test_every_method_builds_its_own_kind_of_w():
    kinds = {}
    for method in METHODS:
        _, config, params = _model(method)
        assert config.method == method
        kinds[method] = {layer: sorted(params[layer]["W"]) for layer in LAYERS}
    assert kinds["flop"] == {"layers_0": ["kernel", "log_alpha"], "layers_1": ["P", "Q", "log_alpha"]}
    assert kinds["agp"] == {"layers_0": ["kernel"], "layers_1": ["kernel"]}
    assert kinds["agp_structured"] == {layer: ["P", "Q", "diag"] for layer in LAYERS}
    assert kinds["l0"] == {layer: ["kernel", "log_alpha_weight"] for layer in LAYERS}
    assert kinds["l0_block"] == {layer: ["kernel", "log_alpha_block"] for layer in LAYERS}
    _, _, structured = _model("agp_structured")
    assert structured["layers_1"]["W"]["P"].shape == (16, 12)  # the parameter-neutral rank 768 // 64
    _, _, block = _model("l0_block")
    assert block["layers_0"]["W"]["log_alpha_block"].shape == (4, 12)


def test_prunable_shapes_are_the_dense_w_matrices():
    _, config, _ = _model("flop")
    assert config.prunable_shapes == {"layers_0/W": (16, 48), "layers_1/W": (16, 48)}
    wide = SRUConfig(vocab_size=11, d_model=16, n_layers=3, embed_dim=8, rank=None)
    # embed != d_model: layer 0 has a fourth slice U3, the highway input
    assert wide.prunable_shapes == {"layers_0/W": (8, 64), "layers_1/W": (16, 48), "layers_2/W": (16, 48)}
    assert reference_params(wide.prunable_shapes) == 8 * 64 + 2 * 16 * 48


def test_an_unknown_method_is_refused_naming_the_accepted_ones():
    with pytest.raises(ValueError) as err:
        SRUConfig(vocab_size=11, d_model=16, n_layers=2, rank=None, method="bogus")
    msg = str(err.value)
    assert "method='bogus'" in msg
    for method in ("flop", "agp", "agp_structured", "l0", "l0_block"):
        assert f"'{method}'" in msg


def test_a_block_that_does_not_divide_a_w_is_refused_naming_its_path():
    with pytest.raises(ValueError, match=r"'layers_0/W'.*in=16 is not a multiple of 5"):
        SRUConfig(vocab_size=11, d_model=16, n_layers=2, embed_dim=16, rank=None, method="l0_block", block=(5, 5))
    with pytest.raises(ValueError, match=r"'layers_0/W'.*out=48 is not a multiple of 5"):
        SRUConfig(vocab_size=11, d_model=16, n_layers=2, embed_dim=16, rank=None, method="l0_block", block=(4, 5))
    # the block only matters to l0_block
    assert SRUConfig(vocab_size=11, d_model=16, n_layers=2, embed_dim=16, rank=None, method="l0", block=(5, 5))


# --- one sparsity for every method ---------------------------------------------------------------------------


def test_reference_params_sums_in_times_out():
    assert reference_params({"a": (16, 48), "b/W": (3, 5)}) == 768 + 15
    with pytest.raises(ValueError, match="shapes is empty"):
        reference_params({})


@pytest.mark.parametrize("frac,sparsity", [(0.5, 0.5), (0.25, 0.75)])
def test_all_methods_give_the_same_sparsity_for_the_same_kept_count(frac, sparsity):
    kept_per_w = round(WEIGHTS_PER_W * frac)  # 384 or 192
    for method in METHODS:
        _, config, params = _model(method)
        shapes = config.prunable_shapes
        edited = _keep(method, params, frac)
        assert reference_params(shapes) == 2 * WEIGHTS_PER_W
        assert int(kept_weights(edited, config, shapes)) == 2 * kept_per_w, method
        for layer in LAYERS:
            assert int(kept_weights(edited, config, {f"{layer}/W": (16, 48)})) == kept_per_w, (method, layer)
        assert float(reference_sparsity(edited, config, shapes)) == sparsity, method


def test_untouched_models_keep_every_dense_reference_weight():
    for method in METHODS:
        _, config, params = _model(method)
        if method in ("flop", "l0", "l0_block"):  # open every gate: the init's near-zero log_alpha rounds a few shut
            params = jax.tree_util.tree_map_with_path(
                lambda path, x: jnp.full_like(x, OPEN) if fp.is_gate_param(path[-1].key) else x, params
            )
        assert int(kept_weights(params, config, config.prunable_shapes)) == 2 * WEIGHTS_PER_W, method
        assert float(reference_sparsity(params, config, config.prunable_shapes)) == 0.0, method


def test_factorized_components_above_the_dense_size_count_as_the_dense_matrix():
    _, config, params = _model("flop", rank=16)  # 16 components of 64 = 1024 > 768
    shapes = {"layers_1/W": (16, 48)}
    node = params["layers_1"]["W"]
    for shut, expected in [(0, 768), (3, 768), (4, 768), (5, 11 * 64), (10, 6 * 64), (16, 0)]:
        la = jnp.asarray(_pattern(16, shut, seed=shut))
        edited = {**params, "layers_1": {**params["layers_1"], "W": {**node, "log_alpha": la}}}
        # 13 kept: min(832, 768); 12 kept: min(768, 768); 11 kept: 704
        assert int(kept_weights(edited, config, shapes)) == expected, shut


def test_a_layer_cut_to_nothing_or_absent_keeps_nothing():
    _, config, params = _model("flop")
    shut_all = {**params, "layers_0": {**params["layers_0"], "W": {
        **params["layers_0"]["W"], "log_alpha": jnp.full((16,), SHUT)}}}
    shapes = config.prunable_shapes
    half = _keep("flop", params, 0.5)
    both = {**half, "layers_0": shut_all["layers_0"]}
    assert int(kept_weights(both, config, shapes)) == 384  # layer 1's only
    small, small_config = fp.shrink(both, config)
    assert "W" not in small["layers_0"]  # no bias: nothing is left of layer 0's W
    assert int(kept_weights(small, small_config, shapes)) == 384
    assert float(reference_sparsity(small, small_config, shapes)) == 0.75


def test_kept_weights_refuses_a_layer_without_a_dense_reference_count():
    params = {"emb": {"embedding_0": jnp.ones((5, 4)), "projection_0": jnp.ones((4, 8))}}
    with pytest.raises(ValueError, match="kept_weights: the adaptive layer at 'emb' has no dense-reference count"):
        kept_weights(params, fp.Plan(), {"emb": (5, 8)})


def test_kept_weights_counts_with_the_models_eval_mask():
    for method, gate_key in (("l0", "log_alpha_weight"), ("l0_block", "log_alpha_block")):
        _, config, params = _model(method)
        shapes = config.prunable_shapes
        with pytest.raises(ValueError, match="kept_weights: gate=None must be"):
            kept_weights(params, None, shapes)
        zeros = {layer: {**params[layer], "W": {**params[layer]["W"], gate_key: jnp.zeros_like(
            params[layer]["W"][gate_key])}} for layer in LAYERS}
        zeros = {**params, **zeros}
        # 'flop': P(z != 0) = 11/12 at log_alpha = 0, so round(n / 12) gates of each W shut: 64 of 768 weights
        # (4 of 48 blocks of 16); 'clip': clip(0.5 * 1.2 - 0.1, 0, 1) = 0.5, every gate open
        assert int(kept_weights(zeros, config, shapes)) == 2 * 704, method
        assert int(kept_weights(zeros, fp.GateConfig(), shapes)) == 2 * 704, method
        clip = fp.Plan(gate=fp.GateConfig(eval_mask="clip"))
        assert int(kept_weights(zeros, clip, shapes)) == 2 * 768, method


def test_reference_sparsity_runs_under_jit():
    _, config, params = _model("flop")
    edited = _keep("flop", params, 0.25)
    got = jax.jit(lambda p: reference_sparsity(p, config, config.prunable_shapes))(edited)
    assert float(got) == 0.75


# --- the export ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_the_export_keeps_the_same_sparsity_and_gives_the_gated_outputs(method):
    model, config, params = _model(method)
    edited = _keep(method, params, 0.5)
    small, small_config = fp.shrink(edited, config)
    assert isinstance(small_config, SRUConfig) and small_config.method == method
    shapes = config.prunable_shapes
    assert float(reference_sparsity(small, small_config, shapes)) == 0.5
    assert int(kept_weights(small, small_config, shapes)) == 768
    assert not any(fp.is_gate_param(k) for layer in LAYERS for k in small[layer].get("W", {}))
    y_gated = _logits(model, edited)
    y_small = _logits(model_for(small_config), small)
    np.testing.assert_allclose(y_small, y_gated, atol=1e-5)
    assert not np.allclose(y_gated, _unpruned_logits(method), atol=1e-3)  # the pruning did change the model


def test_the_exports_have_the_shapes_of_what_was_kept():
    shapes = {}
    for method in METHODS:
        _, config, params = _model(method)
        small, _ = fp.shrink(_keep(method, params, 0.5), config)
        shapes[method] = {layer: {k: v.shape for k, v in small[layer]["W"].items()} for layer in LAYERS}
        if method in ("agp", "l0", "l0_block"):  # masked dense: as many weights, exact zeros
            for layer in LAYERS:
                assert int(np.count_nonzero(np.asarray(small[layer]["W"]["kernel"]))) == 384, (method, layer)
    assert shapes["flop"] == {"layers_0": {"kernel": (8, 48)}, "layers_1": {"P": (16, 6), "Q": (6, 48)}}
    assert shapes["agp_structured"] == {layer: {"P": (16, 6), "Q": (6, 48)} for layer in LAYERS}
    for method in ("agp", "l0", "l0_block"):
        assert shapes[method] == {layer: {"kernel": (16, 48)} for layer in LAYERS}


def test_agp_structured_export_cuts_zero_diagonal_entries_and_folds_the_rest():
    model, config, params = _model("agp_structured")
    edited = _keep("agp_structured", params, 0.25)  # 3 of 12 entries kept
    small, small_config = fp.shrink(edited, config)
    for layer in LAYERS:
        node, kept = edited[layer]["W"], np.flatnonzero(np.asarray(edited[layer]["W"]["diag"]))
        assert small_config.plan.spec(f"{layer}/W") == fp.FactorizedSpec(rank=3)
        np.testing.assert_allclose(small[layer]["W"]["P"], np.asarray(node["P"])[:, kept], rtol=1e-6)
        folded = np.asarray(node["Q"])[kept] * np.asarray(node["diag"])[kept][:, None]
        np.testing.assert_allclose(small[layer]["W"]["Q"], folded, rtol=1e-6)
    np.testing.assert_allclose(_logits(model_for(small_config), small), _logits(model, edited), atol=1e-5)


def test_agp_structured_export_with_every_entry_kept_is_a_merged_kernel():
    model, config, params = _model("agp_structured")
    diag = jnp.linspace(0.5, 2.0, 12)
    edited = {**params, "layers_1": {**params["layers_1"], "W": {**params["layers_1"]["W"], "diag": diag}}}
    small, small_config = fp.shrink(edited, config)
    assert set(small["layers_1"]["W"]) == {"kernel"}  # 12 (16 + 48) = 768 >= 16 x 48: merged
    assert small_config.plan.spec("layers_1/W") == fp.FactorizedSpec(rank=12, merged=True)
    node = edited["layers_1"]["W"]
    expected = np.asarray(node["P"], np.float64) @ (np.asarray(diag)[:, None] * np.asarray(node["Q"], np.float64))
    np.testing.assert_allclose(small["layers_1"]["W"]["kernel"], expected, atol=1e-5)
    np.testing.assert_allclose(_logits(model_for(small_config), small), _logits(model, edited), atol=1e-5)
    assert float(reference_sparsity(small, small_config, config.prunable_shapes)) == 0.0


def test_a_path_with_no_layer_is_refused_not_counted_as_pruned():
    from flaxprune.gates import GateConfig

    params = {"layers_0": {"W": {"kernel": np.ones((4, 6), np.float32)}}}
    with pytest.raises(ValueError, match=r"shapes names 'layers_1/W', but the params hold no node there"):
        kept_weights(params, GateConfig(), {"layers_0/W": (4, 6), "layers_1/W": (4, 6)})
    with pytest.raises(ValueError, match=r"shapes names 'layers_0', but the params hold no layer weights"):
        kept_weights(params, GateConfig(), {"layers_0": (4, 6)})
