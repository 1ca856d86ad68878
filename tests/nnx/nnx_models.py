"""Tiny user models for the NNX tests: an MLP and a tied adaptive LM, each with a Linen twin of the same params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import flaxprune as fp
from flaxprune import nnx as fpx

D_IN, D_HIDDEN, D_OUT = 6, 8, 5
X = jnp.asarray(np.random.default_rng(0).standard_normal((7, D_IN)), jnp.float32)
ADAPTIVE = dict(n_token=20, d_embed=8, d_proj=6, cutoffs=(5, 12), div_val=2)
IDS = jnp.array([[0, 4, 5, 11, 12, 19], [3, 7, 13, 2, 18, 6]])


class MLP(nnx.Module):
    """A user's own MLP: flaxprune layers swapped in for nnx.Linear, a LayerNorm and dropout left as they are."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc0 = fpx.InputGatedDense(D_IN, D_HIDDEN, rngs=rngs)
        self.norm = nnx.LayerNorm(D_HIDDEN, rngs=rngs)
        self.fc1 = fpx.FactorizedDense(D_HIDDEN, D_HIDDEN, rank=D_HIDDEN, rngs=rngs)
        self.out = fpx.FactorizedDense(D_HIDDEN, D_OUT, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        h = self.norm(jax.nn.relu(self.fc0(x)))
        h = jax.nn.relu(self.fc1(h))
        return self.out(self.dropout(h))


class LinenMLP(nn.Module):
    """The same model in Linen: same module names, so the same params tree."""

    plan: fp.Plan = fp.Plan()

    @nn.compact
    def __call__(self, x, deterministic=True):
        h = nn.relu(fp.InputGatedDense(D_HIDDEN, plan=self.plan, name="fc0")(x, deterministic))
        h = nn.LayerNorm(name="norm")(h)
        h = nn.relu(fp.FactorizedDense(D_HIDDEN, rank=D_HIDDEN, plan=self.plan, name="fc1")(h, deterministic))
        return fp.FactorizedDense(D_OUT, plan=self.plan, name="out")(h, deterministic)


class AdaptiveLM(nnx.Module):
    """Adaptive embedding, a hidden layer, and a softmax tied to the embedding."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = fpx.AdaptiveEmbedding(**ADAPTIVE, rngs=rngs)
        self.hidden = fpx.FactorizedDense(6, 6, rngs=rngs)
        self.softmax = fpx.AdaptiveSoftmax(**ADAPTIVE, tied=self.embed, rngs=rngs)

    def __call__(self, ids):
        return self.softmax(jnp.tanh(self.hidden(self.embed(ids))), embedding=self.embed)


def materialize(make, seed: int = 0) -> nnx.Module:
    """``make()`` built under ``nnx.eval_shape``, its variables then filled on the host.

    A real init compiles every initializer at every shape (truncated normals: seconds each on a busy
    2-core machine); these tests need values, not those distributions. Params get ``0.5 N(0, 1)``
    (LayerNorm scales ``1 + ...``), each rng stream its own key, counts start at 0.
    """
    module = nnx.eval_shape(make)
    state = nnx.state(module)
    rng = np.random.default_rng(seed)
    streams = iter(range(seed * 1000, seed * 1000 + 1000))

    def fill(path, x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(next(streams))
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.zeros(x.shape, x.dtype)
        value = 0.5 * rng.standard_normal(x.shape) + (1.0 if path[-1].key == "scale" else 0.0)
        return jnp.asarray(value, x.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
    nnx.update(module, state)
    return module


def spread_gates(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """Sets every ``log_alpha*`` to values spread over [-4, 4], so the eval mask cuts some gates and keeps others."""
    rng = np.random.default_rng(seed)
    for _, layer in fpx.layers_of(model):
        for name, value in list(vars(layer).items()):
            if isinstance(value, nnx.Param) and fp.is_gate_param(name):
                n = value[...].shape[-1]
                value[...] = jnp.asarray(rng.permutation(np.linspace(-4.0, 4.0, n)), jnp.float32)
    return model


def linen_twin_params(model: nnx.Module) -> dict:
    """The NNX model's params as a Linen params tree (asserting the Linen model builds the same tree)."""
    params = fpx.params_of(model)
    shapes = jax.eval_shape(lambda: LinenMLP().init(jax.random.key(0), X))["params"]
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
    return params
