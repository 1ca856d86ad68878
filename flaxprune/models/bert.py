"""BERT encoder and sequence classifier whose encoder projections FLOP can prune.

FLOP (Wang, Wohlwend & Lei, EMNLP 2020, Sec. 4.3) prunes BERT while
fine-tuning it on GLUE: every weight matrix of the encoder layers (query,
key, value, attention output, intermediate, output) is factorized by SVD of
its pretrained value, ``W = U S V^T -> P = U sqrt(S)``, ``Q = sqrt(S) V^T``,
and a hard-concrete gate is put on each rank-1 component. The embeddings,
the pooler and the classifier head are not pruned.

The architecture is Devlin et al.'s (2019) BERT as HF ``transformers``
implements ``BertModel`` / ``BertForSequenceClassification``: word +
position + token-type embeddings and a LayerNorm; post-norm layers
``x = LN(x + Attn(x))``, ``x = LN(x + W2 gelu(W1 x))`` with the exact (erf)
GELU; a pooler ``tanh(W h_[CLS])``; and ``classifier(dropout(pooled))``.

One config builds both variants, with identical param paths, so a dense
checkpoint fills its factorized twin with
``flaxprune.factorize_params(dense_params, twin_params)``:

* ``factorized=False``: every encoder projection is an ``nn.Dense``
  (``kernel: [in, out]``, ``bias``), the pretrained model as it is;
* ``factorized=True``: each is a ``FactorizedDense`` (``P``, ``Q``, ``bias``
  and, with ``gated=True``, ``log_alpha``) of rank ``config.rank``, by default
  the full rank ``min(in, out)`` at which the SVD is exact.

Param paths (``H`` = hidden size)::

    bert/embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
    bert/embeddings/norm/{scale,bias}
    bert/encoder/layer_{i}/attention/{query,key,value,output}/...   # [H, H] projections
    bert/encoder/layer_{i}/attention/output_norm/{scale,bias}
    bert/encoder/layer_{i}/intermediate/...                         # [H, intermediate]
    bert/encoder/layer_{i}/output/...                               # [intermediate, H]
    bert/encoder/layer_{i}/output_norm/{scale,bias}
    bert/pooler/{kernel,bias}
    classifier/{kernel,bias}

(:class:`BertEncoder` alone has the same paths without ``bert/``.)
``flaxprune.models.bert_checkpoint`` loads HF-format checkpoints into them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxprune.layers.factorized import FactorizedDense
from flaxprune.plan import Plan

__all__ = ["INIT_STD", "BertClassifier", "BertConfig", "BertEncoder", "BertLayer"]

INIT_STD = 0.02  # BERT's initializer_range: normal(0.02) for every kernel and embedding


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of :class:`BertEncoder` and :class:`BertClassifier` (defaults: BERT-base).

    Surgery returns ``dataclasses.replace(config, plan=new_plan)``; every
    other field stays as it was.
    """

    vocab_size: int = 30522  # WordPiece vocabulary size (bert-base-uncased)
    hidden_size: int = 768  # width H of the residual stream and of the embeddings
    num_layers: int = 12  # encoder layers
    num_heads: int = 12  # attention heads; hidden_size must be divisible by it
    intermediate_size: int = 3072  # hidden width of each layer's feed-forward
    max_position: int = 512  # learned absolute positions: the longest sequence accepted
    type_vocab_size: int = 2  # token types (segments A / B)
    layer_norm_eps: float = 1e-12  # epsilon of every LayerNorm (BERT's value)
    dropout: float = 0.1  # on embeddings, attention and feed-forward outputs, and before the classifier
    attention_dropout: float = 0.1  # on the attention probabilities
    num_labels: int = 2  # classifier outputs; 1 = regression (e.g. STS-B)
    factorized: bool = False  # encoder projections as FactorizedDense (P, Q) instead of nn.Dense (kernel)
    rank: int | None = None  # rank of each factorized projection; None: full rank min(in, out), so SVD is exact
    gated: bool = False  # hard-concrete gates on the factorized components (requires factorized=True)
    dtype: Any = None  # computation dtype (None: from inputs and params); softmax and logits stay float32
    param_dtype: Any = jnp.float32  # dtype of the params (log_alpha is always float32)
    plan: Plan = Plan()  # gate hyperparameters and per-layer structure; shrink() returns a new one

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
            _check_int(name, getattr(self, name), 1)
        _check_int("type_vocab_size", self.type_vocab_size, 1)
        _check_int("num_labels", self.num_labels, 1)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BertConfig: hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}."
            )
        if self.rank is not None:
            full = min(self.hidden_size, self.intermediate_size)
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank <= full:
                raise ValueError(
                    f"BertConfig: rank={self.rank!r} must be None (full rank) or an integer in "
                    f"[1, min(hidden_size, intermediate_size)] = [1, {full}] (SVD gives at most min(in, out) "
                    "components)."
                )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"BertConfig: layer_norm_eps={eps!r} must be a float > 0.")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig: {name}={value!r} must be a float in [0, 1).")
        for name in ("factorized", "gated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BertConfig: {name}={getattr(self, name)!r} must be True or False.")
        if self.gated and not self.factorized:
            raise ValueError(
                "BertConfig: gated=True requires factorized=True (the gates sit on the factorized components)."
            )
        if not isinstance(self.plan, Plan):
            raise ValueError(f"BertConfig: plan={self.plan!r} must be a flaxprune.Plan.")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"BertConfig: {name}={value!r} must be an integer >= {low}.")


def _project(cfg: BertConfig, features: int, name: str, x: jax.Array, deterministic: bool) -> jax.Array:
    """One encoder projection: ``nn.Dense``, or ``FactorizedDense`` at the same path when factorized."""
    if not cfg.factorized:
        dense = nn.Dense(
            features,
            kernel_init=nn.initializers.normal(INIT_STD),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name=name,
        )
        return dense(x)
    rank = cfg.rank if cfg.rank is not None else min(x.shape[-1], features)
    factorized = FactorizedDense(
        features,
        rank=rank,
        gated=cfg.gated,
        plan=cfg.plan,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name=name,
    )
    return factorized(x, deterministic)


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it: E[x^2] - E[x]^2 loses digits on pretrained activations.
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        use_fast_variance=False,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name=name,
    )


class BertEmbeddings(nn.Module):
    """``LN(word + position + token_type)`` then dropout; params ``{word,position,token_type}_embeddings``, ``norm``."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config

        def embed(num: int, name: str) -> nn.Embed:
            return nn.Embed(
                num,
                cfg.hidden_size,
                embedding_init=nn.initializers.normal(INIT_STD),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                name=name,
            )

        positions = jnp.arange(input_ids.shape[1])[None, :]  # [1, time]
        x = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position, "position_embeddings")(positions)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )  # [batch, time, hidden]
        x = _layer_norm(cfg, "norm")(x)
        return nn.Dropout(cfg.dropout)(x, deterministic=deterministic)


class BertAttention(nn.Module):
    """Multi-head self-attention, output projection, residual and LayerNorm.

    Params: ``query``, ``key``, ``value``, ``output`` (``[H, H]`` projections)
    and ``output_norm``.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, deterministic: bool) -> jax.Array:
        # x: [batch, time, hidden]; mask_bias: [batch, 1, 1, time] float32, 0 or a large negative number.
        cfg = self.config
        batch, time, hidden = x.shape
        n, d = cfg.num_heads, cfg.head_dim

        def heads(name: str) -> jax.Array:
            # Head-major [batch, heads, time, head_dim]: the batch dimensions lead in both attention products,
            # which XLA's CPU backend runs 2.3x faster than the [batch, time, heads, ...] einsums at MiniLM's shape.
            return jnp.swapaxes(_project(cfg, hidden, name, x, deterministic).reshape(batch, time, n, d), 1, 2)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bnqd,bnkd->bnqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
        probs = jax.nn.softmax(scores + mask_bias, axis=-1)  # [batch, heads, time, time]
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
        out = jnp.einsum("bnqk,bnkd->bnqd", probs.astype(v.dtype), v)
        out = jnp.swapaxes(out, 1, 2).reshape(batch, time, hidden)
        out = _project(cfg, hidden, "output", out, deterministic)
        out = nn.Dropout(cfg.dropout)(out, deterministic=deterministic)
        return _layer_norm(cfg, "output_norm")(x + out)


class BertLayer(nn.Module):
    """One post-norm encoder layer.

    Params: ``attention/...``, ``intermediate`` (``[H, intermediate]``),
    ``output`` (``[intermediate, H]``) and ``output_norm``.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        x = BertAttention(cfg, name="attention")(x, mask_bias, deterministic)
        h = _project(cfg, cfg.intermediate_size, "intermediate", x, deterministic)
        h = jax.nn.gelu(h, approximate=False)  # BERT's exact erf GELU
        h = _project(cfg, cfg.hidden_size, "output", h, deterministic)
        h = nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        return _layer_norm(cfg, "output_norm")(x + h)


class BertLayers(nn.Module):
    """The stack ``layer_0 ... layer_{num_layers - 1}``."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, mask_bias: jax.Array, deterministic: bool, return_hidden_states: bool = False
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        """The last layer's output, and with ``return_hidden_states`` every layer's (``[batch, time, hidden]`` each)."""
        states = []
        for i in range(self.config.num_layers):
            x = BertLayer(self.config, name=f"layer_{i}")(x, mask_bias, deterministic)
            states.append(x)
        return (x, tuple(states)) if return_hidden_states else x


class BertEncoder(nn.Module):
    """BERT without a head (HF's ``BertModel``): embeddings, encoder layers, pooler.

    Params: ``embeddings/...``, ``encoder/layer_{i}/...``, ``pooler/{kernel,bias}``
    (see the module docstring). Rng streams in training mode
    (``deterministic=False``): ``'dropout'``, and ``'gates'`` when gated; eval
    mode needs none.
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        deterministic: bool = True,
        return_hidden_states: bool = False,
    ) -> tuple[jax.Array, ...]:
        """Encodes a batch of token sequences.

        Args:
          input_ids: ``[batch, time]`` int WordPiece ids.
          token_type_ids: ``[batch, time]`` int segment ids (None: all 0).
          attention_mask: ``[batch, time]``, 1 (or True) for real tokens and 0
            for padding (None: all real). Padded keys get no attention.
          deterministic: eval mode: no dropout and the gates' evaluation mask.
          return_hidden_states: also return the output of every encoder layer
            (for distillation); the params and the other outputs are the same.

        Returns:
          ``(last_hidden, pooled)``: ``[batch, time, hidden]`` and
          ``[batch, hidden]`` (``tanh(W h_[CLS] + b)``); with
          ``return_hidden_states``, ``(last_hidden, pooled, hidden_states)``
          where ``hidden_states`` is a tuple of ``num_layers`` arrays
          ``[batch, time, hidden]``, layer 0 first (the last is ``last_hidden``).

        Raises:
          ValueError: if the inputs are not ``[batch, time]`` alike, or longer
            than ``max_position``.
        """
        cfg = self.config
        token_type_ids, attention_mask = _check_inputs(cfg, input_ids, token_type_ids, attention_mask)
        # Additive mask as in BERT: 0 for real keys, the most negative float32 for padding.
        mask_bias = (1.0 - attention_mask.astype(jnp.float32)) * jnp.finfo(jnp.float32).min
        mask_bias = mask_bias[:, None, None, :]  # [batch, 1, 1, time]: broadcast over heads and queries
        x = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic)
        encoded = BertLayers(cfg, name="encoder")(x, mask_bias, deterministic, return_hidden_states)
        x, states = encoded if return_hidden_states else (encoded, None)  # x: [batch, time, hidden]
        pooled = nn.Dense(
            cfg.hidden_size,
            kernel_init=nn.initializers.normal(INIT_STD),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="pooler",
        )(x[:, 0])
        if return_hidden_states:
            return x, jnp.tanh(pooled), states
        return x, jnp.tanh(pooled)


def _check_inputs(cfg: BertConfig, input_ids, token_type_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
    if input_ids.ndim != 2:
        raise ValueError(f"BERT: input_ids must be [batch, time], got shape {input_ids.shape}.")
    if input_ids.shape[1] > cfg.max_position:
        raise ValueError(f"BERT: sequences of {input_ids.shape[1]} tokens exceed max_position={cfg.max_position}.")
    token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    attention_mask = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
    for name, value in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
        if value.shape != input_ids.shape:
            raise ValueError(f"BERT: {name} has shape {value.shape}, expected input_ids' {input_ids.shape}.")
    return token_type_ids, attention_mask


class BertClassifier(nn.Module):
    """BERT with a sequence-classification head (HF's ``BertForSequenceClassification``).

    ``logits = classifier(dropout(pooled))``; params ``bert/...`` (a
    :class:`BertEncoder`) and ``classifier/{kernel,bias}``. With
    ``num_labels=1`` the single output is a regression score.
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        deterministic: bool = True,
        return_hidden_states: bool = False,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        """Classifies a batch of sequences; arguments as :meth:`BertEncoder.__call__`.

        Returns:
          ``[batch, num_labels]`` float32 logits; with ``return_hidden_states``,
          ``(logits, hidden_states)``, the encoder layers' outputs as
          :meth:`BertEncoder.__call__` returns them.
        """
        cfg = self.config
        encoded = BertEncoder(cfg, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic, return_hidden_states
        )
        pooled = encoded[1]
        pooled = nn.Dropout(cfg.dropout)(pooled, deterministic=deterministic)
        logits = nn.Dense(
            cfg.num_labels,
            kernel_init=nn.initializers.normal(INIT_STD),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="classifier",
        )(pooled)
        if return_hidden_states:
            return logits.astype(jnp.float32), encoded[2]
        return logits.astype(jnp.float32)
