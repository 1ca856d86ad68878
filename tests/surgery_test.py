"""SVD factorization and shrink: exactness and equivalence, jitted."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp

X = jax.random.normal(jax.random.key(7), (4, 3, 12))


def test_factorize_is_exact_at_full_rank():
    kernel = jax.random.normal(jax.random.key(0), (12, 5))
    f = fp.factorize(kernel, bias=jnp.ones(5))
    chex.assert_shape([f["P"], f["Q"]], [(12, 5), (5, 5)])
    chex.assert_trees_all_close(f["P"] @ f["Q"], kernel, atol=1e-5)
    chex.assert_trees_all_equal(f["bias"], jnp.ones(5))


def test_factorize_truncation_is_eckart_young():
    kernel = np.asarray(jax.random.normal(jax.random.key(1), (8, 6)))
    s = np.linalg.svd(kernel, compute_uv=False)
    f = fp.factorize(kernel, rank=2)
    err = np.linalg.norm(kernel - np.asarray(f["P"] @ f["Q"]))
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[2:] ** 2)), rtol=1e-4)
    # Balanced split: both factors carry sqrt(S).
    np.testing.assert_allclose(np.linalg.norm(f["P"], axis=0), np.sqrt(s[:2]), rtol=1e-5)


@pytest.mark.parametrize("rank", [0, 7, -1])
def test_factorize_rejects_bad_rank(rank):
    with pytest.raises(ValueError, match=rf"rank={rank}.*\[1, 6\]"):
        fp.factorize(jnp.ones((8, 6)), rank=rank)


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    rank: int | None = None
    gated: bool = True
    use_bias: bool = True
    plan: fp.Plan = fp.Plan()


class FactorizedMLP(nn.Module):
    config: MLPConfig

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = self.config
        x = fp.FactorizedDense(8, rank=c.rank, gated=c.gated, use_bias=c.use_bias, plan=c.plan, name="fc1")(
            x, deterministic
        )
        x = nn.relu(x)
        x = fp.InputGatedDense(6, gated=c.gated, use_bias=c.use_bias, plan=c.plan, name="mid")(x, deterministic)
        return fp.FactorizedDense(5, rank=c.rank, gated=c.gated, use_bias=c.use_bias, plan=c.plan, name="fc2")(
            jnp.tanh(x), deterministic
        )


class Dense3(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8, name="fc1")(x))
        x = nn.Dense(6, name="mid")(x)
        return nn.Dense(5, name="fc2")(jnp.tanh(x))


class FullRankTwin(nn.Module):
    """Dense3 with every Dense replaced, at full rank min(in, out)."""

    @nn.compact
    def __call__(self, x, deterministic=True):
        x = nn.relu(fp.FactorizedDense(8, rank=8, name="fc1")(x, deterministic))
        x = fp.InputGatedDense(6, name="mid")(x, deterministic)
        return fp.FactorizedDense(5, rank=5, name="fc2")(jnp.tanh(x), deterministic)


def test_factorize_params_gives_the_dense_model():
    dense = Dense3().init(jax.random.key(0), X)["params"]
    twin = FullRankTwin().init(jax.random.key(1), X)["params"]
    warm = fp.factorize_params(dense, twin)
    chex.assert_trees_all_equal(warm["mid"]["log_alpha"], twin["mid"]["log_alpha"])
    # With every gate held open the twin computes exactly the dense model.
    opened = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.full_like(v, 1e3) if "log_alpha" in jax.tree_util.keystr(p) else v, warm
    )
    ref = Dense3().apply({"params": dense}, X)
    out = FullRankTwin().apply({"params": opened}, X, deterministic=False, rngs={"gates": jax.random.key(0)})
    chex.assert_trees_all_close(out, ref, atol=1e-4)


def test_factorize_params_names_the_disagreeing_path():
    dense = Dense3().init(jax.random.key(0), X)["params"]
    twin = FullRankTwin().init(jax.random.key(1), X)["params"]
    with pytest.raises(ValueError, match="'fc1/kernel' has shape"):
        fp.factorize_params({**dense, "fc1": {"kernel": jnp.ones((3, 8)), "bias": jnp.ones(8)}}, twin)
    with pytest.raises(ValueError, match="no place in the twin.*extra"):
        fp.factorize_params({**dense, "extra": {"kernel": jnp.ones((2, 2))}}, twin)
    with pytest.raises(ValueError, match="'mid/bias' is in the twin but not"):
        fp.factorize_params({**dense, "mid": {"kernel": dense["mid"]["kernel"]}}, twin)


def _gated_params(model, key=0):
    params = model.init(jax.random.key(key), X)["params"]
    rng = np.random.default_rng(key)
    out = {}
    for name, node in params.items():
        node = dict(node)
        if "log_alpha" in node:
            n = node["log_alpha"].shape[0]
            node["log_alpha"] = jnp.asarray(rng.choice([-6.0, 0.5, 3.0], size=n), jnp.float32)
        if "bias" in node:
            node["bias"] = jnp.asarray(rng.normal(size=node["bias"].shape), jnp.float32)
        out[name] = node
    return out


def _assert_equivalent(cfg, params):
    model = FactorizedMLP(cfg)
    new_params, new_cfg = fp.shrink(params, cfg)
    assert isinstance(new_cfg, MLPConfig) and new_cfg.rank == cfg.rank
    gated = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=True))(params, X)
    reduced = jax.jit(lambda p, x: FactorizedMLP(new_cfg).apply({"params": p}, x))(new_params, X)
    chex.assert_trees_all_close(reduced, gated, atol=1e-5)
    assert fp.total_params(new_params) < fp.total_params(params)
    assert not any("log_alpha" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(new_params))
    return new_params, new_cfg


@pytest.mark.parametrize("use_bias", [True, False])
def test_shrink_equivalence_factorized_and_input_gated(use_bias):
    cfg = MLPConfig(use_bias=use_bias)
    params = _gated_params(FactorizedMLP(cfg), key=3)
    new_params, new_cfg = _assert_equivalent(cfg, params)
    spec = new_cfg.plan.spec("fc1")
    kept = int(np.count_nonzero(fp.deterministic_mask(params["fc1"]["log_alpha"])))
    assert spec == fp.FactorizedSpec(rank=kept) and new_params["fc1"]["P"].shape == (12, kept)
    assert isinstance(new_cfg.plan.spec("mid"), fp.InputGatedSpec)
    # A second shrink finds nothing left to cut.
    again, again_cfg = fp.shrink(new_params, new_cfg)
    chex.assert_trees_all_equal(again, new_params)
    assert again_cfg == new_cfg


def test_shrink_merges_to_dense_when_factors_are_not_smaller():
    cfg = MLPConfig(rank=5)  # fc1: 12x8 keeping all 5 components -> 5*20 = 100 > 96 = dense (fc2: 6x5, full rank)
    params = _gated_params(FactorizedMLP(cfg), key=1)
    params["fc1"]["log_alpha"] = jnp.full((5,), 3.0)
    new_params, new_cfg = _assert_equivalent(cfg, params)
    assert set(new_params["fc1"]) == {"kernel", "bias"}
    assert new_cfg.plan.spec("fc1") == fp.FactorizedSpec(rank=5, merged=True)


def test_shrink_to_bias_only():
    cfg = MLPConfig()
    params = _gated_params(FactorizedMLP(cfg), key=2)
    params["fc2"]["log_alpha"] = jnp.full_like(params["fc2"]["log_alpha"], -9.0)
    params["mid"]["log_alpha"] = jnp.full_like(params["mid"]["log_alpha"], -9.0)
    new_params, new_cfg = _assert_equivalent(cfg, params)
    assert set(new_params["fc2"]) == {"bias"} and set(new_params["mid"]) == {"bias"}
    rows = {r.path: r for r in fp.report(new_params, new_cfg)}
    assert rows["fc2"].kind == "bias_only"
    no_bias = MLPConfig(use_bias=False)
    params = _gated_params(FactorizedMLP(no_bias), key=2)
    params["fc2"]["log_alpha"] = jnp.full_like(params["fc2"]["log_alpha"], -9.0)
    new_params, _ = _assert_equivalent(no_bias, params)
    assert "fc2" not in new_params


def test_shrink_accepts_a_plan_and_rejects_mismatches():
    cfg = MLPConfig()
    params = _gated_params(FactorizedMLP(cfg), key=4)
    new_params, new_plan = fp.shrink(params, cfg.plan)
    assert isinstance(new_plan, fp.Plan)
    # Reduced params with the original plan are fine (no specs); gated params with the new plan are not.
    with pytest.raises(ValueError, match="params do not match the plan at 'fc1'"):
        fp.shrink(params, new_plan)
    with pytest.raises(ValueError, match="variables\\['params'\\]"):
        fp.shrink({"params": params}, cfg)
    with pytest.raises(ValueError, match="config must be a flaxprune.Plan"):
        fp.shrink(params, {"plan": cfg.plan})


@dataclasses.dataclass(frozen=True)
class LMConfig:
    plan: fp.Plan = fp.Plan()


class TinyLM(nn.Module):
    """Tied adaptive embedding/softmax around a factorized layer: every gated kind in one model."""

    config: LMConfig

    def setup(self):
        kw = dict(n_token=12, d_embed=8, d_proj=6, cutoffs=(4, 8), div_val=2, plan=self.config.plan)
        self.embed = fp.AdaptiveEmbedding(**kw)
        self.body = fp.FactorizedDense(6, plan=self.config.plan)
        self.softmax = fp.AdaptiveSoftmax(**kw, tied=self.embed)

    def __call__(self, ids, deterministic=True):
        h = jnp.tanh(self.body(self.embed(ids, deterministic), deterministic))
        return self.softmax(h, deterministic)


def test_shrink_equivalence_tied_adaptive_lm():
    ids = jnp.arange(12).reshape(3, 4) % 12
    cfg = LMConfig()
    params = TinyLM(cfg).init(jax.random.key(0), ids)["params"]
    params["embed"]["log_alpha_0"] = jnp.array([3.0, -6.0, 3.0, -6.0, 0.5, 3.0, 3.0, -6.0])
    params["embed"]["log_alpha_2"] = jnp.full((2,), -6.0)  # a whole cluster goes
    params["body"]["log_alpha"] = jnp.array([3.0, -6.0, 3.0])
    # Tied weights are counted once: (4 + 6) * 8 + (4 + 6) * 4 + (4 + 6) * 2 + (6 + 6) * 3.
    assert fp.prunable_params(params) == 80 + 40 + 20 + 36
    new_params, new_cfg = fp.shrink(params, cfg)
    assert new_cfg.plan.spec("embed") == fp.AdaptiveSpec(dims=(5, 4, 0))
    gated = jax.jit(lambda p: TinyLM(cfg).apply({"params": p}, ids))(params)
    reduced = jax.jit(lambda p: TinyLM(new_cfg).apply({"params": p}, ids))(new_params)
    chex.assert_trees_all_close(reduced, gated, atol=1e-5)
    assert fp.total_params(new_params) < fp.total_params(params)
    again, _ = fp.shrink(new_params, new_cfg)  # the reduced pair still validates
    chex.assert_trees_all_equal(again, new_params)


def test_factorize_rank_and_bias_are_keyword_only():
    kernel = jnp.ones((8, 6))
    with pytest.raises(TypeError, match="positional"):
        fp.factorize(kernel, 3)  # once bound to bias
    assert fp.factorize(kernel, rank=3)["P"].shape == (8, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_shrink_refuses_non_finite_gates_naming_the_path(bad):
    cfg = MLPConfig()
    params = _gated_params(FactorizedMLP(cfg), key=5)
    params["mid"]["log_alpha"] = params["mid"]["log_alpha"].at[1].set(bad)
    with pytest.raises(ValueError, match=r"shrink: 'mid/log_alpha' holds non-finite values \(1 of 8\)"):
        fp.shrink(params, cfg)
