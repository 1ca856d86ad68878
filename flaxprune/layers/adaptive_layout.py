"""Size accounting and surgery for adaptive embedding / softmax params nodes.

Cluster ``i`` of an :class:`~flaxprune.layers.adaptive.AdaptiveEmbedding` (or
an untied :class:`~flaxprune.layers.adaptive.AdaptiveSoftmax`) holds
``embedding_{i}: [n_i, d_i]``, ``projection_{i}: [d_i, d_proj]`` and
``log_alpha_{i}: [d_i]``; each gate costs ``n_i + d_proj`` weights. Surgery
keeps the dims whose evaluation mask is non-zero and folds the mask into the
columns of ``embedding_{i}``.
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GATE_PARAM, GateConfig, deterministic_mask
from flaxprune.layers.adaptive import AdaptiveSpec
from flaxprune.layers.layout import GateGroup, Layout, LayerRow, Node, mismatch, size, to_numpy

__all__ = ["ADAPTIVE_LAYOUT"]

# --- layout: size accounting and surgery on the params node -----------------

_CLUSTER_KEY = re.compile(r"(embedding|projection|log_alpha|bias)_(\d+)")


def _n_clusters(node: Node) -> int:
    found = [int(m.group(2)) for m in map(_CLUSTER_KEY.fullmatch, node) if m]
    n = max(found) + 1 if found else 0
    if "cluster_kernel" in node:
        n = max(n, int(node["cluster_kernel"].shape[1]) + 1)
    return n


def _d_proj(node: Node) -> int:
    for i in range(_n_clusters(node)):
        if f"projection_{i}" in node:
            return int(node[f"projection_{i}"].shape[1])
    return int(node["cluster_kernel"].shape[0]) if "cluster_kernel" in node else 0


def _match(node: Node) -> bool:
    # Any cluster's weights, not just cluster 0's: surgery may cut cluster 0 to 0 dims.
    return any(f"embedding_{i}" in node and f"projection_{i}" in node for i in range(_n_clusters(node)))


def _groups(node: Node) -> list[GateGroup]:
    out = []
    for i in range(_n_clusters(node)):
        if f"{GATE_PARAM}_{i}" in node:
            cost = int(node[f"embedding_{i}"].shape[0] + node[f"projection_{i}"].shape[1])
            out.append(GateGroup(f"{GATE_PARAM}_{i}", node[f"{GATE_PARAM}_{i}"], cost))
    return out


def _rows(path: str, node: Node, gate: GateConfig) -> list[LayerRow]:
    """One row per cluster still recorded in the node.

    An embedding cluster cut to 0 dims leaves no key behind, so it has no
    row (it costs nothing); a softmax cluster keeps its bias and its row.
    """
    d_proj = _d_proj(node)
    rows = []
    for i in range(_n_clusters(node)):
        emb, bias, la = node.get(f"embedding_{i}"), node.get(f"bias_{i}"), node.get(f"{GATE_PARAM}_{i}")
        if emb is None and bias is None:
            continue
        n_i = int(emb.shape[0] if emb is not None else bias.shape[0])
        full = int(emb.shape[1]) if emb is not None else 0
        kept = full if la is None else int(np.count_nonzero(np.asarray(deterministic_mask(la, gate))))
        per_dim = d_proj + n_i if bias is not None else d_proj  # softmax: both matmuls; embedding: a gather
        rows.append(
            LayerRow(
                path=path,
                kind=f"adaptive[{i}]",
                shape=(n_i, d_proj),
                rank=kept,
                full_rank=full,
                params=kept * (n_i + d_proj) + (size(bias) if bias is not None else 0),
                flops_per_token=2 * kept * per_dim,
                gated=la is not None,
            )
        )
    return rows


def _shrink(path: str, node: Node, gate: GateConfig) -> tuple[dict | None, AdaptiveSpec]:
    weight_keys = {f"{k}_{i}" for i in range(_n_clusters(node)) for k in ("embedding", "projection", GATE_PARAM)}
    out = {k: v for k, v in node.items() if k not in weight_keys}  # bias_i, cluster_kernel, cluster_bias
    dims = []
    for i in range(_n_clusters(node)):
        if f"embedding_{i}" not in node:
            dims.append(0)
            continue
        emb_in, proj_in = node[f"embedding_{i}"], node[f"projection_{i}"]
        if f"{GATE_PARAM}_{i}" not in node:
            out[f"embedding_{i}"], out[f"projection_{i}"] = emb_in, proj_in
            dims.append(int(emb_in.shape[1]))
            continue
        mask = to_numpy(deterministic_mask(node[f"{GATE_PARAM}_{i}"], gate))
        keep = np.flatnonzero(mask)
        dims.append(int(keep.size))
        if keep.size == 0:
            continue
        emb = to_numpy(emb_in)[:, keep] * mask[keep]  # fold the soft mask into the embedding columns
        out[f"embedding_{i}"] = jnp.asarray(emb, np.asarray(emb_in).dtype)
        out[f"projection_{i}"] = jnp.asarray(to_numpy(proj_in)[keep], np.asarray(proj_in).dtype)
    return (out or None), AdaptiveSpec(dims=tuple(dims), gated=False)


def _check(path: str, node: Node, spec: Any) -> None:
    if not isinstance(spec, AdaptiveSpec):
        raise mismatch(path, "the layer kind", "adaptive (embedding_i, projection_i)", type(spec).__name__)
    if _n_clusters(node) > len(spec.dims):
        raise mismatch(path, "the number of clusters", _n_clusters(node), len(spec.dims))
    for i, d in enumerate(spec.dims):
        emb, proj, la = (node.get(f"{k}_{i}") for k in ("embedding", "projection", GATE_PARAM))
        if d == 0:
            if emb is not None or proj is not None or la is not None:
                raise mismatch(path, f"cluster {i}'s params", "present", "none (0 dims)")
            continue
        if emb is None or proj is None:
            raise mismatch(path, f"cluster {i}'s params", "absent", f"embedding_{i} and projection_{i} with {d} dims")
        if emb.shape[1] != d or proj.shape[0] != d:
            raise mismatch(path, f"cluster {i}'s dims (embedding, projection)", (emb.shape[1], proj.shape[0]), d)
        if (la is not None) != spec.gated:
            raise mismatch(path, f"cluster {i} gated", la is not None, spec.gated)
        if la is not None and la.shape != (d,):
            raise mismatch(path, f"log_alpha_{i}'s shape", la.shape, (d,))


ADAPTIVE_LAYOUT = Layout("adaptive", _match, _groups, _rows, _shrink, _check)
