"""The adaptive softmax's log-probabilities, and its loss without the full-vocabulary logits.

:class:`~flaxprune.layers.adaptive.AdaptiveSoftmax` called on hidden states
returns ``[..., n_token]`` log-probabilities: for WikiText-103's 267,735 words
that is a gigabyte per thousand tokens in float32, most of it for rare words
no target names. Training needs only ``-log p(target)``:

    -log p(t) = lse(head) - head[t]                                t in cluster 0
    -log p(t) = lse(head) - head[n_0 + i - 1] + lse(l_i) - l_i[t - start_i]   t in cluster i > 0

where ``head`` is cluster 0's logits with one logit per tail cluster and
``l_i`` cluster ``i``'s logits. :func:`adaptive_nll` computes the head for
every token (``O(N * (n_0 + clusters))``) and each tail cluster's logits only
for the tokens whose target falls in it, at static shapes: the tokens are
sorted by their target's cluster and walked ``chunk`` at a time under
``lax.scan``; a ``lax.cond`` computes a cluster's logits for a chunk only when
one of the chunk's targets is in it, so after sorting each chunk touches one
cluster, sometimes two. The scan body is rematerialized (``jax.checkpoint``),
so the backward pass keeps no ``[chunk, n_i]`` residual per chunk and peak
memory is ``O(N * (d + n_0 + clusters) + chunk * max n_i)``.

Sorting reads every token of the batch: under data-parallel sharding XLA
gathers the flattened tokens for it (the loss is exact either way).

:func:`adaptive_log_probs` is the full ``[..., n_token]`` distribution, for
evaluation and sampling; both share :func:`cluster_logits`, and the Linen and
NNX softmaxes call both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["ClusterWeights", "adaptive_log_probs", "adaptive_nll", "cluster_logits", "target_clusters"]

# (embedding_i [n_i, d_i] | None, projection_i [d_i, d_proj] | None, mask_i [d_i] | None, bias_i [n_i])
ClusterWeights = tuple[Any, Any, Any, Any]


def target_clusters(targets: jax.Array, starts: Sequence[int]) -> jax.Array:
    """The cluster of each target id: ``i`` with ``starts[i] <= t < starts[i + 1]``, int32, shape of ``targets``."""
    bounds = jnp.asarray(starts[1:], jnp.int32)
    return jnp.searchsorted(bounds, targets.astype(jnp.int32), side="right").astype(jnp.int32)


def cluster_logits(hidden: jax.Array, weights: ClusterWeights, dtype: Any) -> jax.Array:
    """``((hidden @ P^T) * z) @ E^T + b``: ``[N, n_i]`` logits of one cluster (the bias alone when it has no dims)."""
    emb, proj, mask, bias = weights
    if emb is None:
        return jnp.broadcast_to(bias.astype(dtype), hidden.shape[:-1] + bias.shape)
    h = jnp.matmul(hidden.astype(dtype), proj.astype(dtype).T)  # [N, d_i]
    if mask is not None:
        h = h * mask.astype(dtype)
    return jnp.matmul(h, emb.astype(dtype).T) + bias.astype(dtype)  # [N, n_i]


def adaptive_log_probs(
    hidden: jax.Array,
    weights: Sequence[ClusterWeights],
    cluster_kernel: jax.Array | None,
    cluster_bias: jax.Array | None,
    dtype: Any,
) -> jax.Array:
    """``[..., n_token]`` log-probabilities of every token under an adaptive softmax.

    The head softmax runs over cluster 0's tokens plus one logit per tail
    cluster (``hidden @ cluster_kernel + cluster_bias``); ``log p(t) =
    head[t]`` in cluster 0 and ``head[n_0 + i - 1] + log_softmax(l_i)[t -
    start_i]`` in cluster ``i``.

    Args:
      hidden: ``[..., d_proj]`` final hidden states.
      weights: per cluster ``(embedding_i, projection_i, mask_i, bias_i)``, as in :func:`adaptive_nll`.
      cluster_kernel, cluster_bias: ``[d_proj, clusters - 1]``, ``[clusters - 1]``; None with one cluster.
      dtype: dtype of the matmuls; the normalization runs in at least float32.

    Returns:
      ``[..., n_token]`` log-probabilities, normalized over the vocabulary.
    """
    hidden = hidden.astype(dtype)
    logits = [cluster_logits(hidden, w, dtype) for w in weights]  # [..., n_i] each
    # Normalizing over the vocabulary in bf16 would lose the rare tokens.
    norm = jnp.promote_types(dtype, jnp.float32)
    head = logits[0]
    n_0 = head.shape[-1]
    if len(logits) > 1:
        cluster = jnp.matmul(hidden, cluster_kernel.astype(dtype)) + cluster_bias.astype(dtype)
        head = jnp.concatenate([head, cluster], axis=-1)  # [..., n_0 + clusters - 1]
    head = jax.nn.log_softmax(head.astype(norm), axis=-1)
    pieces = [head[..., :n_0]]
    for i, tail in enumerate(logits[1:], start=1):
        pieces.append(head[..., n_0 + i - 1, None] + jax.nn.log_softmax(tail.astype(norm), axis=-1))
    return jnp.concatenate(pieces, axis=-1)


def _pick(logits: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, index[:, None], axis=-1)[:, 0]


def adaptive_nll(
    hidden: jax.Array,
    targets: jax.Array,
    clusters: Sequence[tuple[int, int, int]],
    weights: Sequence[ClusterWeights],
    cluster_kernel: jax.Array | None,
    cluster_bias: jax.Array | None,
    dtype: Any = jnp.float32,
    chunk: int = 1024,
) -> jax.Array:
    """``-log p(targets)`` under an adaptive softmax, cluster by cluster.

    Args:
      hidden: ``[N, d_proj]`` final hidden states (flatten batch and time first).
      targets: ``[N]`` int token ids in ``[0, n_token)``.
      clusters: ``((start_i, n_i, d_i), ...)`` from :func:`~flaxprune.layers.adaptive.adaptive_clusters`.
      weights: per cluster ``(embedding_i, projection_i, mask_i, bias_i)``; embedding and projection None for
        a cluster cut to 0 dims, the mask None when ungated (the mask is already sampled: one per call).
      cluster_kernel, cluster_bias: ``[d_proj, clusters - 1]``, ``[clusters - 1]``; None with one cluster.
      dtype: dtype of the matmuls; logits are normalized in at least float32.
      chunk: tokens per step of the tail clusters' scan; bounds their transient logits to ``[chunk, n_i]``.

    Returns:
      ``[N]`` float32 negative log-likelihoods in nats.
    """
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"adaptive_nll: hidden must be [N, d_proj] and targets [N], got {hidden.shape} and {targets.shape}."
        )
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"adaptive_nll: chunk={chunk!r} must be an integer >= 1.")
    norm = jnp.promote_types(dtype, jnp.float32)
    starts = [s for s, _, _ in clusters]
    targets = targets.astype(jnp.int32)
    head = cluster_logits(hidden, weights[0], dtype)  # [N, n_0]
    n_0 = head.shape[-1]
    if len(clusters) == 1:
        head = head.astype(norm)
        return jax.nn.logsumexp(head, axis=-1) - _pick(head, jnp.clip(targets, 0, n_0 - 1))
    tails = jnp.matmul(hidden.astype(dtype), cluster_kernel.astype(dtype)) + cluster_bias.astype(dtype)
    head = jnp.concatenate([head, tails], axis=-1).astype(norm)  # [N, n_0 + clusters - 1]
    cluster = target_clusters(targets, starts)  # [N]
    head_index = jnp.where(cluster == 0, jnp.clip(targets, 0, n_0 - 1), n_0 + cluster - 1)
    head_nll = jax.nn.logsumexp(head, axis=-1) - _pick(head, head_index)  # [N]
    return head_nll + _tail_nll(hidden, targets, cluster, clusters, weights, dtype, norm, chunk)


def _tail_nll(hidden, targets, cluster, clusters, weights, dtype, norm, chunk) -> jax.Array:
    """``lse(l_i) - l_i[t - start_i]`` for every token in a tail cluster, 0 in cluster 0: ``[N]``."""
    n = hidden.shape[0]
    chunk = min(chunk, n)
    order = jnp.argsort(cluster, stable=True)  # [N]: tokens grouped by their target's cluster
    padded = -(-n // chunk) * chunk
    pad = padded - n
    order_p = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)])  # padding reads token 0 ...
    cluster_p = jnp.concatenate([cluster[order], jnp.full((pad,), -1, jnp.int32)])  # ... in no cluster
    steps = padded // chunk
    xs = (
        hidden[order_p].reshape(steps, chunk, hidden.shape[-1]),
        targets[order_p].reshape(steps, chunk),
        cluster_p.reshape(steps, chunk),
    )

    @jax.checkpoint
    def body(_, x):
        h, t, c = x  # [chunk, d_proj], [chunk], [chunk]
        out = jnp.zeros((chunk,), norm)
        for i in range(1, len(clusters)):
            start, n_i, _ = clusters[i]

            def one(h=h, t=t, c=c, i=i, start=start, n_i=n_i):
                logits = cluster_logits(h, weights[i], dtype).astype(norm)  # [chunk, n_i]
                local = jnp.clip(t - start, 0, n_i - 1)
                return jnp.where(c == i, jax.nn.logsumexp(logits, axis=-1) - _pick(logits, local), 0.0)

            out = out + jax.lax.cond(jnp.any(c == i), one, lambda: jnp.zeros((chunk,), norm))
        return None, out

    _, sorted_nll = jax.lax.scan(body, None, xs)  # [steps, chunk]
    return jnp.zeros((n,), norm).at[order].set(sorted_nll.reshape(-1)[:n])
