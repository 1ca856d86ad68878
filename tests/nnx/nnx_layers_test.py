"""The NNX layers against the Linen layers: same param names, same outputs for the same weights and keys."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxprune as fp
from flaxprune import gates
from flaxprune import nnx as fpx

ATOL = 1e-6
KEY = jax.random.key(7)


@pytest.fixture
def linen_draws(monkeypatch):
    """Makes the Linen layers draw the gate keys of ``nnx.Rngs(gates=key).gates``, in call order.

    An NNX layer called with ``rngs=nnx.Rngs(gates=key)`` draws the same keys in
    the same order, so both sample the same gates; only the Linen path (which
    reaches ``sample`` through ``flaxprune.gates``) is patched. The keys are
    drawn up front, so the patched Linen call may run under ``jax.jit``.
    """

    def use(key):
        stream = nnx.Rngs(gates=key).gates
        keys = iter([stream() for _ in range(8)])
        original = gates.sample
        monkeypatch.setattr(gates, "sample", lambda _key, *args, **kwargs: original(next(keys), *args, **kwargs))

    return use


def twin(make, params):
    """The NNX module ``make()`` builds, with the Linen ``params`` (asserting the same names and nesting).

    Built under ``nnx.eval_shape``: a real init would compile every initializer at every shape, and the
    weights come from ``params`` anyway. Its kept ``gates`` stream stays abstract, so the calls here pass
    their own ``rngs``.
    """
    module = nnx.eval_shape(make)
    assert jax.tree.map(jnp.shape, fpx.params_of(module)) == jax.tree.map(jnp.shape, params)  # same names
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
    return module


def linen_params(linen, *args, **kwargs):
    """Random params of a Linen module's shapes (zero biases and near-equal gates would hide mistakes).

    Shapes by ``jax.eval_shape``, values by numpy: eager jax.random would compile once per shape.
    """
    shapes = jax.eval_shape(lambda: linen.init(jax.random.key(0), *args, **kwargs))["params"]
    rng = np.random.default_rng(3)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), shapes)


def check_parity(linen, make, x, linen_draws, **call):
    """Eval and train mode, eagerly: the Linen call compiles each op once, the NNX call reuses them."""
    params = linen_params(linen, x, True, **call)
    layer = twin(make, params)
    want = linen.apply({"params": params}, x, True, **call)
    np.testing.assert_allclose(layer(x, True, **call), want, atol=ATOL, rtol=0)
    linen_draws(KEY)
    want = linen.apply({"params": params}, x, False, rngs={"gates": KEY}, **call)
    np.testing.assert_allclose(layer(x, False, rngs=nnx.Rngs(gates=KEY), **call), want, atol=ATOL, rtol=0)
    return layer


X = jax.random.normal(jax.random.key(1), (4, 3, 6))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"rank": 2, "use_bias": False},
        {"diagonal": True},
        {"per_example_gates": True},
        {"gated": False},
    ],
)
def test_factorized_dense_matches_linen(kwargs, linen_draws):
    linen = fp.FactorizedDense(5, **kwargs)
    check_parity(linen, lambda: fpx.FactorizedDense(6, 5, **kwargs, rngs=nnx.Rngs(0)), X, linen_draws)


@pytest.mark.parametrize("spec", [fp.FactorizedSpec(rank=2, merged=True), fp.FactorizedSpec(rank=0)])
def test_factorized_dense_from_a_spec_matches_linen(spec, linen_draws):
    linen = fp.FactorizedDense(5, plan=fp.Plan(layers=(("", spec),)))
    check_parity(linen, lambda: fpx.FactorizedDense(6, 5, spec=spec, rngs=nnx.Rngs(0)), X, linen_draws)


@pytest.mark.parametrize(
    "kwargs,spec",
    [
        ({}, None),
        ({"per_example_gates": True}, None),
        ({}, fp.InputGatedSpec(keep=(0, 2, 5), gated=True)),
        ({}, fp.InputGatedSpec(keep=(1, 4), gated=False)),
        ({"use_bias": False}, fp.InputGatedSpec(keep=())),
    ],
)
def test_input_gated_dense_matches_linen(kwargs, spec, linen_draws):
    plan = fp.Plan() if spec is None else fp.Plan(layers=(("", spec),))
    linen = fp.InputGatedDense(5, plan=plan, **kwargs)
    make = lambda: fpx.InputGatedDense(6, 5, spec=spec, **kwargs, rngs=nnx.Rngs(0))  # noqa: E731
    if spec is not None and spec.keep == () and not kwargs.get("use_bias", True):
        layer = make()
        assert fpx.params_of(layer) == {}
        np.testing.assert_array_equal(layer(X, True), jnp.zeros((4, 3, 5)))
        return
    check_parity(linen, make, X, linen_draws)


ADAPTIVE = dict(n_token=20, d_embed=8, d_proj=6, cutoffs=(5, 12), div_val=2)
IDS = jnp.array([[0, 4, 5, 11, 12, 19], [3, 7, 13, 2, 18, 6]])


class LinenLM(nn.Module):
    tied: bool

    def setup(self):
        self.embed = fp.AdaptiveEmbedding(**ADAPTIVE)
        self.softmax = fp.AdaptiveSoftmax(**ADAPTIVE, tied=self.embed if self.tied else None)

    def __call__(self, ids, deterministic):
        return self.softmax(jnp.tanh(self.embed(ids, deterministic)), deterministic)


class NnxLM(nnx.Module):
    def __init__(self, tied, rngs):
        self.embed = fpx.AdaptiveEmbedding(**ADAPTIVE, rngs=rngs)
        self.softmax = fpx.AdaptiveSoftmax(**ADAPTIVE, tied=self.embed if tied else None, rngs=rngs)
        self.tied = tied

    def __call__(self, ids, deterministic=None, *, rngs=None):
        h = jnp.tanh(self.embed(ids, deterministic, rngs=rngs))
        return self.softmax(h, deterministic, rngs=rngs, embedding=self.embed if self.tied else None)

    def nll(self, ids):
        h = jnp.tanh(self.embed(ids, True))
        return self.softmax.nll(h, ids, True, embedding=self.embed if self.tied else None, chunk=4)


@pytest.mark.parametrize("tied", [False, True])
def test_adaptive_embedding_and_softmax_match_linen(tied, linen_draws):
    linen = LinenLM(tied)
    params = linen_params(linen, IDS, True)
    model = twin(lambda: NnxLM(tied, nnx.Rngs(0)), params)
    np.testing.assert_allclose(model(IDS, True), linen.apply({"params": params}, IDS, True), atol=ATOL, rtol=0)
    linen_draws(KEY)
    want = linen.apply({"params": params}, IDS, False, rngs={"gates": KEY})
    got = model(IDS, False, rngs=nnx.Rngs(gates=KEY))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(jnp.exp(got).sum(-1), 1.0, atol=1e-5)
    if tied:  # the loss without the full logits is the same function the Linen layer calls
        np.testing.assert_allclose(model.nll(IDS), fp.layers.nll(model(IDS, True), IDS), atol=1e-5, rtol=1e-5)


def test_adaptive_embedding_with_a_cut_cluster_matches_linen(linen_draws):
    spec = fp.AdaptiveSpec(dims=(3, 0, 2), gated=True)
    linen = fp.AdaptiveEmbedding(**ADAPTIVE, plan=fp.Plan(layers=(("", spec),)))
    make = lambda: fpx.AdaptiveEmbedding(**ADAPTIVE, spec=spec, rngs=nnx.Rngs(0))  # noqa: E731
    layer = check_parity(linen, make, IDS, linen_draws)
    assert "embedding_1" not in fpx.params_of(layer)


def test_the_kept_gates_stream_advances_and_a_key_is_used_as_given():
    layer = fpx.FactorizedDense(6, 5, rngs=nnx.Rngs(params=0, gates=1))
    a, b = layer(X), layer(X)
    assert not np.allclose(a, b)  # two draws from the kept stream
    np.testing.assert_array_equal(layer(X, rngs=KEY), layer(X, rngs=KEY))
    layer.eval()
    np.testing.assert_array_equal(layer(X), nnx.view(layer, deterministic=True)(X))
    np.testing.assert_array_equal(layer(X), layer(X, True))


def test_jitted_train_and_eval_calls():
    layer = fpx.FactorizedDense(6, 5, rngs=nnx.Rngs(params=0, gates=1))

    @nnx.jit
    def both(layer, x):
        return layer(x), layer(x, True)

    train, evaluated = both(layer, X)
    np.testing.assert_allclose(evaluated, layer(X, True), atol=ATOL)
    assert train.shape == (4, 3, 5)
    assert int(layer.rngs.count[...]) == 1  # the draw inside jit advanced the layer's stream


def one_line_error(fn, *words):
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)


def R():
    return nnx.Rngs(0)  # a fresh one per layer: an Rngs used inside a trace must be made there


@pytest.mark.parametrize(
    "fn,words",
    [
        (lambda: fpx.FactorizedDense(0, 4, rngs=R()), ["in_features=0"]),
        (lambda: fpx.FactorizedDense(4, True, rngs=R()), ["out_features=True"]),
        (lambda: fpx.FactorizedDense(4, 6, rank=5, rngs=R()), ["rank=5", "[1, 4]"]),
        (lambda: fpx.FactorizedDense(4, 6, rngs=0), ["rngs=0", "nnx.Rngs"]),
        (lambda: fpx.FactorizedDense(4, 6, gate="flop", rngs=R()), ["gate='flop'"]),
        (lambda: fpx.FactorizedDense(4, 6, spec=fp.InputGatedSpec(), rngs=R()), ["spec=", "FactorizedSpec"]),
        (lambda: fpx.FactorizedDense(4, 6, spec=fp.FactorizedSpec(rank=5), rngs=R()), ["spec=", "min(in, out) = 4"]),
        (lambda: fpx.InputGatedDense(4, 6, spec=fp.InputGatedSpec(keep=(1, 4)), rngs=R()), ["keeps input 4"]),
        (lambda: fpx.AdaptiveEmbedding(20, 8, 6, cutoffs=(12, 5), rngs=R()), ["cutoffs=(12, 5)"]),
        (lambda: fpx.AdaptiveEmbedding(20, 8, 0, rngs=R()), ["d_proj=0"]),
        (lambda: fpx.AdaptiveEmbedding(20, 8, 6, spec=fp.AdaptiveSpec(dims=(8,)), cutoffs=(5,), rngs=R()), ["spec"]),
        (
            lambda: fpx.AdaptiveSoftmax(20, 8, 4, tied=fpx.AdaptiveEmbedding(20, 8, 6, rngs=R()), rngs=R()),
            ["d_proj=4", "tied embedding's d_proj=6"],
        ),
        (lambda: fpx.AdaptiveSoftmax(20, 8, 6, tied="embed", rngs=R()), ["tied='embed'"]),
    ],
)
def test_bad_construction_is_one_line_naming_the_parameter(fn, words):
    one_line_error(lambda: nnx.eval_shape(fn), *words)  # abstractly: the errors come before any init


def traced(fn, module, *args, **kwargs):
    """``fn(module, *args, **kwargs)`` under ``nnx.eval_shape``: checks raise while tracing, nothing runs."""
    return lambda: nnx.eval_shape(lambda m: fn(m, *args, **kwargs), module)


def test_bad_calls_are_one_line_naming_the_parameter():
    # Built and called abstractly (no init or op to compile): every error comes before any arithmetic.
    no_stream = nnx.eval_shape(lambda: fpx.FactorizedDense(6, 5, rngs=nnx.Rngs(params=0)))
    one_line_error(traced(lambda m, x: m(x), no_stream, X), "rngs=", "deterministic=True")
    one_line_error(traced(lambda m, x: m(x, rngs="key"), no_stream, X), "rngs='key'")
    one_line_error(traced(lambda m, x: m(x, True), no_stream, X[..., :4]), "x has shape (4, 3, 4)", "6")
    undecided = nnx.eval_shape(lambda: fpx.InputGatedDense(6, 5, deterministic=None, rngs=R()))
    one_line_error(traced(lambda m, x: m(x), undecided, X), "deterministic is None")
    model = nnx.eval_shape(lambda: NnxLM(True, nnx.Rngs(0)))
    h = jnp.zeros((2, 6, 6))
    one_line_error(traced(lambda m, h: m.softmax(h, True), model, h), "tied", "embedding=")
    one_line_error(
        traced(lambda m, h: m.softmax.nll(h, IDS[:, :3], True, embedding=m.embed), model, h), "targets (2, 3)"
    )
    untied = nnx.eval_shape(lambda: NnxLM(False, nnx.Rngs(0)))
    one_line_error(traced(lambda m, h: m.softmax(h, True, embedding=m.embed), untied, h), "embedding=")
