"""The models the benchmark suite times: their sizes, variants, inputs, forward passes and train steps.

Each model family (``'sru'``, ``'txl'``, ``'bert'``) comes in three sizes:
``'full'`` (CPU-sized but realistic: FLOP's enwik8 SRU scaled to a CPU as in
``../shared/bench``, the ``sru_small`` demo model, a ``txl_small``-shaped
Transformer-XL, a BERT of MiniLM-L6's shape), ``'small'`` (``--quick``) and
``'tiny'`` (the tests). Every model is built in up to three variants of the
same size: ``'gated'`` (FLOP's, hard-concrete gates on every component),
``'ungated'`` (the same factors without gates) and ``'dense'`` (plain
kernels: BERT's ``factorized=False``; for the SRU and Transformer-XL every
factorized layer merged by the plan into one ``[in, out]`` kernel, the first
SRU layer's input-gated kernel ungated). Weights are random: speed does not
depend on their values.

The pruned model is made without training (:func:`cut_gates`): in every gate
vector a fraction ``s`` of the components is set far closed and the rest far
open, then :func:`flaxprune.shrink` cuts them away.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxprune.gates import is_gate_param
from flaxprune.lagrangian import penalty
from flaxprune.layers import FactorizedSpec
from flaxprune.models import BertClassifier, BertConfig, SRUConfig, SRULanguageModel, TransformerXL, TransformerXLConfig
from flaxprune.param_tree import layer_nodes
from flaxprune.size import expected_sparsity

__all__ = [
    "FAMILIES",
    "SIZES",
    "ModelSpec",
    "build",
    "cut_gates",
    "forward_fn",
    "init_params",
    "inputs_for",
    "model_specs",
    "train_step_fn",
]

FAMILIES = ("sru", "txl", "bert")
SIZES = ("full", "small", "tiny")
FAR = 20.0  # |log_alpha| of a cut or kept gate: P(z > 0) = sigmoid(-20 + 2.4) ~ 2e-8, so E[L0] rounds exactly


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model at one size, in its variants.

    Attributes:
      name: the row label, e.g. ``'sru_bench'``.
      family: ``'sru'``, ``'txl'`` or ``'bert'``.
      description: the shape in words.
      variants: ``{'gated': config, 'ungated': config, 'dense': config}`` (same size, same paths).
      train_shape: ``(batch, seq)`` of the train step.
    """

    name: str
    family: str
    description: str
    variants: dict[str, Any]
    train_shape: tuple[int, int]

    @property
    def gated(self) -> Any:
        return self.variants["gated"]

    @property
    def max_seq(self) -> int | None:
        """The longest sequence the model accepts (BERT's ``max_position``), None for no limit."""
        return self.gated.max_position if self.family == "bert" else None


def _sru(name: str, description: str, train_shape, dtype, **fields) -> ModelSpec:
    gated = SRUConfig(dtype=dtype, **fields)
    ungated = dataclasses.replace(gated, gated=False)
    return ModelSpec(name, "sru", description, _with_dense(gated, ungated), train_shape)


def _txl(name: str, description: str, train_shape, dtype, **fields) -> ModelSpec:
    gated = TransformerXLConfig(dtype=dtype, **fields)
    ungated = dataclasses.replace(gated, gated=False)
    return ModelSpec(name, "txl", description, _with_dense(gated, ungated), train_shape)


def _bert(name: str, description: str, train_shape, dtype, **fields) -> ModelSpec:
    dense = BertConfig(dtype=dtype, factorized=False, gated=False, **fields)
    ungated = dataclasses.replace(dense, factorized=True)  # rank None: full rank, as an SVD warm start has it
    variants = {"gated": dataclasses.replace(ungated, gated=True), "ungated": ungated, "dense": dense}
    return ModelSpec(name, "bert", description, variants, train_shape)


def _with_dense(gated: Any, ungated: Any) -> dict[str, Any]:
    """The variants, the dense one being ``ungated`` with every factorized layer merged into a kernel by its plan."""
    shapes = jax.eval_shape(lambda: init_params(ungated, jax.random.key(0)))
    merged = {
        path: FactorizedSpec(rank=min(node["P"].shape[0], node["Q"].shape[1]), merged=True)
        for path, node, layout in layer_nodes(shapes)
        if layout.kind == "factorized"
    }
    dense = dataclasses.replace(ungated, plan=ungated.plan.with_specs(merged))
    return {"gated": gated, "ungated": ungated, "dense": dense}


def model_specs(family: str, size: str, dtype: Any = None) -> list[ModelSpec]:
    """The models of ``family`` at ``size`` (``'full'`` SRU is two: the ``../shared/bench`` shape and ``sru_small``).

    Raises:
      ValueError: for an unknown family or size.
    """
    if family not in FAMILIES:
        raise ValueError(f"model_specs: family={family!r}; accepted: {list(FAMILIES)}.")
    if size not in SIZES:
        raise ValueError(f"model_specs: size={size!r}; accepted: {list(SIZES)}.")
    lm_train, bert_train = ((2, 16), (2, 16)) if size == "tiny" else ((16, 128), (32, 128))
    sru_small = dict(vocab_size=256, d_model=256, n_layers=2, rank=64)  # experiments/configs/sru_small.py
    txl_small = dict(vocab_size=256, n_layers=2, n_heads=4, d_model=128, d_head=32, d_inner=512, mem_len=64)
    if family == "sru":
        if size == "tiny":
            return [_sru("sru_tiny", "SRU 2 x 32, rank 8, vocab 32", lm_train, dtype,
                         vocab_size=32, d_model=32, n_layers=2, rank=8)]
        small = _sru("sru_small", "SRU 2 x 256, rank 64, vocab 256 (sru_small)", lm_train, dtype, **sru_small)
        if size == "small":
            return [small]
        bench = _sru("sru_bench", "SRU 3 x 1024, rank 256, vocab 205 (../shared/bench)", lm_train, dtype,
                     vocab_size=205, d_model=1024, n_layers=3, rank=256)
        return [bench, small]
    if family == "txl":
        if size == "tiny":
            return [_txl("txl_tiny", "Transformer-XL 1 x 32, 2 heads of 16, inner 64, memory 8", lm_train, dtype,
                         vocab_size=32, n_layers=1, n_heads=2, d_model=32, d_head=16, d_inner=64, mem_len=8)]
        return [_txl("txl_small", "Transformer-XL 2 x 128, 4 heads of 32, inner 512, memory 64 (txl_small)",
                     lm_train, dtype, **txl_small)]
    if size == "tiny":
        return [_bert("bert_tiny", "BERT 1 x 32, 2 heads, intermediate 64, vocab 64", bert_train, dtype,
                      vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      max_position=128)]
    if size == "small":
        return [_bert("bert_l2_h128", "BERT 2 x 128, 2 heads, intermediate 512, vocab 30522 (BERT-tiny shape)",
                      bert_train, dtype, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512)]
    return [_bert("bert_minilm", "BERT 6 x 384, 12 heads, intermediate 1536, vocab 30522 (MiniLM-L6 shape)",
                  bert_train, dtype, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)]


# --- building and running a model ------------------------------------------------


def build(config: Any) -> Any:
    """The Flax module a config builds (a BERT config builds the classifier)."""
    if isinstance(config, SRUConfig):
        return SRULanguageModel(config)
    if isinstance(config, TransformerXLConfig):
        return TransformerXL(config)
    return BertClassifier(config)


def _is_lm(config: Any) -> bool:
    return isinstance(config, (SRUConfig, TransformerXLConfig))


def inputs_for(config: Any, batch: int, seq: int, seed: int = 0) -> tuple[jax.Array, ...]:
    """The model's call arguments after the params, on the device: ``(tokens, carry)`` or ``(input_ids,)``."""
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (batch, seq)), jnp.int32)  # [batch, seq]
    if _is_lm(config):
        return tokens, build(config).initial_carry(batch)
    return (tokens,)


def labels_for(config: Any, batch: int, seq: int, seed: int = 1) -> jax.Array:
    """Targets of the train step: next tokens ``[batch, seq]`` for an LM, classes ``[batch]`` for BERT."""
    rng = np.random.default_rng(seed)
    if _is_lm(config):
        return jnp.asarray(rng.integers(0, config.vocab_size, (batch, seq)), jnp.int32)
    return jnp.asarray(rng.integers(0, config.num_labels, (batch,)), jnp.int32)


def init_params(config: Any, key: jax.Array) -> dict[str, Any]:
    """Fresh random params of the model ``config`` builds (their shapes do not depend on batch or length)."""
    return _jitted_init(config)(key)


@functools.lru_cache(maxsize=64)
def _jitted_init(config: Any) -> Callable[[jax.Array], dict[str, Any]]:
    # One compiled init per config (configs are hashable): run op by op, an init compiles every op on its own.
    def init(key):
        params_key, gates_key, dropout_key = jax.random.split(key, 3)
        rngs = {"params": params_key, "gates": gates_key, "dropout": dropout_key}
        return build(config).init(rngs, *inputs_for(config, 1, 4))["params"]

    return jax.jit(init)


def forward_fn(config: Any) -> Callable[..., Any]:
    """``f(params, *inputs)``: the eval-mode forward pass (logits, and the carry of an LM)."""
    model = build(config)

    def forward(params, *inputs):
        return model.apply({"params": params}, *inputs, deterministic=True)

    return forward


def cut_gates(params: dict[str, Any], sparsity: float) -> dict[str, Any]:
    """Every gate vector with a fraction ``sparsity`` of its components far closed, the rest far open.

    Of ``n`` gates the first ``max(1, round((1 - sparsity) n))`` stay open (``log_alpha = +FAR``) and the
    others close (``-FAR``), in every gated layer (the SRU's input-gated first layer too), so
    :func:`flaxprune.shrink` then cuts each layer to that many components.
    """

    def cut(path, leaf):
        last = path[-1]
        if not (isinstance(last, jax.tree_util.DictKey) and is_gate_param(last.key)):
            return leaf
        n = leaf.shape[-1]
        kept = max(1, int(round((1.0 - sparsity) * n)))
        return jnp.broadcast_to(jnp.where(jnp.arange(n) < kept, FAR, -FAR), leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(cut, params)


# --- training ---------------------------------------------------------------------


def train_step_fn(
    config: Any, tx: optax.GradientTransformation, *, prune: bool, target: float = 0.5
) -> Callable[..., tuple[Any, Any]]:
    """``step(trainable, opt_state, key, inputs, labels) -> (trainable, opt_state)``: one full update.

    Cross-entropy of the training-mode forward pass (dropout, sampled gates),
    plus with ``prune`` the Lagrangian ``penalty(expected_sparsity(params, config), target, lambdas)``;
    gradients of everything; one ``tx.update`` (``flop_optimizer``: weights, gates, multipliers); the update
    applied. As ``flaxprune.training.steps`` and ``../shared/bench/flaxprune_side.py`` do.
    """
    model = build(config)
    lm = _is_lm(config)

    def loss_fn(trainable, key, inputs, labels):
        gates_key, dropout_key = jax.random.split(key)
        rngs = {"gates": gates_key, "dropout": dropout_key}
        out = model.apply({"params": trainable["params"]}, *inputs, deterministic=False, rngs=rngs)
        logits = out[0] if lm else out  # [batch, seq, vocab] or [batch, labels]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        if prune:
            loss = loss + penalty(expected_sparsity(trainable["params"], config), target, trainable["lagrangian"])
        return loss

    def step(trainable, opt_state, key, inputs, labels):
        grads = jax.grad(loss_fn)(trainable, key, inputs, labels)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    return step
