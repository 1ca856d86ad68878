"""Size accounting and surgery for adaptive embedding / softmax params nodes.

Cluster ``i`` of an :class:`~flaxprune.layers.adaptive.AdaptiveEmbedding` (or
an untied :class:`~flaxprune.layers.adaptive.AdaptiveSoftmax`) holds
``embedding_{i}: [n_i, d_i]``, ``projection_{i}: [d_i, d_proj]`` and
``log_alpha_{i}: [d_i]``; each gate costs ``n_i + d_proj`` weights. Surgery
keeps the dims whose evaluation mask is non-zero and folds the mask into the
columns of ``embedding_{i}``. An untied softmax also holds ``bias_{i}: [n_i]``
and the cluster logits ``cluster_kernel: [d_proj, clusters - 1]``,
``cluster_bias: [clusters - 1]``, which the report counts in the row of
cluster 0 (the head softmax computes them). A tied softmax holds only the
biases and the cluster logits: no layer of its own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GATE_PARAM, GateConfig, deterministic_mask
from flaxprune.layers.adaptive import AdaptiveSpec
from flaxprune.layers.layout import (
    GateGroup,
    Layout,
    LayerRow,
    Node,
    holds,
    mismatch,
    not_2d,
    shape_of,
    size,
    to_numpy,
    wrong_shape,
)

__all__ = ["ADAPTIVE_LAYOUT"]

# --- layout: size accounting and surgery on the params node -----------------

_CLUSTER_KEY = re.compile(r"(embedding|projection|log_alpha|bias)_(\d+)")
_CLAIM_KEY = re.compile(r"(embedding|projection|log_alpha)_\d+")  # bias_i alone is a tied softmax's
_LOGITS_KEYS = ("cluster_kernel", "cluster_bias")
RESERVED = (
    "flaxprune reserves 'embedding_i', 'projection_i' and 'log_alpha_i' (i = 0, 1, ...) for AdaptiveEmbedding "
    "and AdaptiveSoftmax, whose node holds per cluster i embedding_i: [n_i, d_i] with projection_i: [d_i, d_proj] "
    "(optionally log_alpha_i: [d_i]) or neither, bias_i: [n_i] in a softmax, and nothing else but "
    "cluster_kernel: [d_proj, clusters - 1] and cluster_bias: [clusters - 1]."
)


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
    return any(isinstance(k, str) and _CLAIM_KEY.fullmatch(k) and holds(node, k) for k in node)


def _malformed(node: Node) -> str | None:
    known = [k for k in node if holds(node, k) and (k in _LOGITS_KEYS or _CLUSTER_KEY.fullmatch(str(k)))]
    extra = sorted(str(k) for k in node if k not in known)
    if extra:
        return f"unknown keys {extra}"
    if "cluster_kernel" in node:
        problem = not_2d(node, "cluster_kernel") or wrong_shape(
            node, "cluster_bias", (shape_of(node["cluster_kernel"])[1],)
        )
        if problem:
            return problem
    d_proj = None
    for i in range(_n_clusters(node)):
        emb, proj, la = (f"{k}_{i}" for k in ("embedding", "projection", GATE_PARAM))
        if (emb in node) != (proj in node):
            have, lack = (emb, proj) if emb in node else (proj, emb)
            return f"'{have}' without '{lack}'"
        if emb not in node:
            if la in node:
                return f"'{la}' without '{emb}' and '{proj}'"
            continue
        e, p = shape_of(node[emb]), shape_of(node[proj])
        if len(e) != 2 or len(p) != 2 or e[1] != p[0]:
            return f"{emb} {e} and {proj} {p} are not [n_i, d_i] and [d_i, d_proj]"
        if d_proj is not None and p[1] != d_proj:
            return f"{proj} {p} projects to {p[1]} dims, an earlier cluster to {d_proj}"
        d_proj = p[1]
        problem = wrong_shape(node, la, (e[1],)) or wrong_shape(node, f"bias_{i}", (e[0],))
        if problem:
            return problem
    if d_proj is not None and "cluster_kernel" in node and shape_of(node["cluster_kernel"])[0] != d_proj:
        return f"cluster_kernel has shape {shape_of(node['cluster_kernel'])}, but the projections give d_proj {d_proj}"
    return None


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
    if rows and "cluster_kernel" in node:  # the head softmax also computes the cluster logits
        logits = size(node["cluster_kernel"]) + size(node.get("cluster_bias", ()))
        head = rows[0]
        rows[0] = dataclasses.replace(
            head,
            params=head.params + logits,
            flops_per_token=head.flops_per_token + 2 * size(node["cluster_kernel"]),
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


ADAPTIVE_LAYOUT = Layout(
    kind="adaptive",
    reserved=RESERVED,
    match=_match,
    malformed=_malformed,
    groups=_groups,
    rows=_rows,
    shrink=_shrink,
    check=_check,
)
