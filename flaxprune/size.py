"""Parameter accounting for gated models, as pure functions of the params.

FLOP (Wang et al., 2020, Sec. 3.3) constrains the *expected* model size: each
gate ``z_k`` controls ``c_k`` weights (``in + out`` for a rank-1 component of
a factorized matrix, ``out`` for an input feature, ``n_i + d_proj`` for an
adaptive-embedding dimension), so

    expected_params = sum_k c_k * P(z_k != 0)       (differentiable)
    expected_sparsity = 1 - expected_params / prunable_params

where ``prunable_params = sum_k c_k`` counts every weight a gate controls. The
same definition serves the hard counts after the deterministic mask. Every
layer kind describes its cost per gate through its layout
(``flaxprune.layers.LAYOUTS``), read from the params tree alone: no forward
pass, no model.

Two bases for the sparsity, one definition (``1 - kept / basis``):

* ``'factors'`` (FLOP's own, for models trained factorized from the start):
  the basis is every weight the gates control, so a full-rank factorized
  ``in x out`` matrix counts ``r (in + out)``.
* ``'dense'`` (for a pretrained dense model factorized by SVD, e.g. BERT):
  the basis is the dense layers the nodes stand for (``in * out`` for a
  factorized matrix), so 50% sparsity means the reduced layers hold half the
  weights of the original dense ones. The hard count of a factorized layer is
  ``min(kept (in + out), in * out)``, what :func:`flaxprune.surgery.shrink`
  delivers (it merges factors that are no smaller than the dense kernel); the
  expected count stays the linear ``sum_k c_k P(z_k != 0)``, an upper bound
  of it whose gradient reaches every gate (the ``min`` would have none while
  a layer sits above its dense size, as every full-rank SVD layer starts).
  A full-rank start therefore has a negative expected sparsity (-0.5 for
  square matrices).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.gates import DEFAULT_GATE, GateConfig, deterministic_mask, prob_nonzero
from flaxprune.layers import FactorizedSpec, GateGroup, InputGatedSpec, LayerRow
from flaxprune.param_tree import layer_nodes, node_at
from flaxprune.plan import Plan

__all__ = [
    "BASES",
    "expected_params",
    "expected_sparsity",
    "format_report",
    "gate_groups",
    "hard_params",
    "hard_sparsity",
    "open_sparsity",
    "prunable_params",
    "report",
    "total_params",
    "uniform_rank",
]


BASES = ("factors", "dense")


def _check_basis(basis: str, fn: str) -> None:
    if basis not in BASES:
        raise ValueError(f"{fn}: basis={basis!r} is not a sparsity basis; accepted: {list(BASES)}.")


def gate_groups(params: Mapping[str, Any]) -> list[tuple[str, GateGroup]]:
    """All gate vectors in ``params`` with their cost per gate, as ``(path, group)``."""
    return [(path, g) for path, node, layout in layer_nodes(params) for g in layout.groups(node)]


def _groups_or_raise(params, fn: str) -> list[tuple[str, GateGroup]]:
    groups = gate_groups(params)
    if not groups:
        raise ValueError(
            f"{fn}: params hold no gated layer (no 'log_alpha' next to factorized, input-gated or adaptive "
            "weights); build the model with gated=True, or pass the params collection of a gated model."
        )
    return groups


def _gated_nodes(params) -> list[tuple[list[GateGroup], int]]:
    """``(groups, dense size)`` of every node that holds gates."""
    out = []
    for _, node, layout in layer_nodes(params):
        groups = layout.groups(node)
        if groups:
            full = sum(int(g.log_alpha.shape[-1]) * g.cost_per_gate for g in groups)
            out.append((groups, layout.dense_params(node) if layout.dense_params else full))
    return out


def prunable_params(params: Mapping[str, Any], basis: str = "factors") -> int:
    """The sparsity's basis (a static int): the weights some gate controls
    (``'factors'``), or the dense layers the gated nodes stand for (``'dense'``)."""
    _check_basis(basis, "prunable_params")
    if basis == "factors":
        return sum(int(g.log_alpha.shape[-1]) * g.cost_per_gate for _, g in gate_groups(params))
    return sum(dense for _, dense in _gated_nodes(params))


def open_sparsity(params: Mapping[str, Any], basis: str = "factors") -> float:
    """The sparsity with every gate open, ``1 - prunable('factors') / prunable(basis)``.

    0 on the ``'factors'`` basis; on the ``'dense'`` basis, negative where the
    factors hold more weights than the dense layers (-0.5 for full-rank SVD of
    square matrices). Needs only shapes (works on ``jax.eval_shape`` output).
    """
    _check_basis(basis, "open_sparsity")
    _groups_or_raise(params, "open_sparsity")
    return 1.0 - prunable_params(params, "factors") / prunable_params(params, basis)


def expected_params(params: Mapping[str, Any], gate: GateConfig = DEFAULT_GATE) -> jax.Array:
    """Expected number of prunable weights kept, ``sum_k c_k P(z_k != 0)``; differentiable."""
    groups = _groups_or_raise(params, "expected_params")
    return sum(g.cost_per_gate * jnp.sum(prob_nonzero(g.log_alpha, gate)) for _, g in groups)


def hard_params(params: Mapping[str, Any], gate: GateConfig = DEFAULT_GATE, basis: str = "factors") -> jax.Array:
    """Number of prunable weights kept by the deterministic (eval) mask; jit-compatible.

    With ``basis='dense'`` a node never counts more than its dense size (what
    surgery delivers by merging factors).
    """
    _check_basis(basis, "hard_params")
    _groups_or_raise(params, "hard_params")
    total = jnp.zeros((), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    for groups, dense in _gated_nodes(params):
        kept = sum(g.cost_per_gate * jnp.count_nonzero(deterministic_mask(g.log_alpha, gate)) for g in groups)
        total = total + (jnp.minimum(kept, dense) if basis == "dense" else kept)
    return total


def expected_sparsity(params: Mapping[str, Any], gate: GateConfig = DEFAULT_GATE, basis: str = "factors") -> jax.Array:
    """``1 - expected_params / prunable_params(basis)``; differentiable in every ``log_alpha``."""
    _check_basis(basis, "expected_sparsity")
    return 1.0 - expected_params(params, gate) / prunable_params(params, basis)


def hard_sparsity(params: Mapping[str, Any], gate: GateConfig = DEFAULT_GATE, basis: str = "factors") -> jax.Array:
    """``1 - hard_params / prunable_params``: the sparsity surgery will deliver."""
    return 1.0 - hard_params(params, gate, basis) / prunable_params(params, basis)


def uniform_rank(params: Mapping[str, Any], sparsity: float, basis: str = "factors") -> tuple[int, float]:
    """The largest rank ``r`` that, kept by every gated layer alike, reaches ``sparsity``.

    Each gate group of ``n`` gates costing ``c`` weights each keeps
    ``min(r, n) * c`` weights at rank ``r``; the baseline of uniform
    truncation (every factorized projection cut to its top ``r`` singular
    components) is this. Needs only shapes (works on ``jax.eval_shape``
    output of the gated model).

    Args:
      params: params of a gated model at full size.
      sparsity: the sparsity to reach, in ``[0, 1)``.
      basis: the sparsity basis (``'factors'`` or ``'dense'``).

    Returns:
      ``(rank, sparsity at that rank)``, the latter ``>= sparsity``; rank 0
      when even rank 1 keeps too much.

    Raises:
      ValueError: for a sparsity outside ``[0, 1)``, an unknown basis, or params without gates.
    """
    _check_basis(basis, "uniform_rank")
    if not 0 <= sparsity < 1:
        raise ValueError(f"uniform_rank: sparsity={sparsity!r} must be in [0, 1).")
    groups = [(int(g.log_alpha.shape[-1]), g.cost_per_gate) for _, g in _groups_or_raise(params, "uniform_rank")]
    budget = (1 - sparsity) * prunable_params(params, basis)

    def kept(r: int) -> int:
        return sum(min(r, n) * c for n, c in groups)

    rank = max((r for r in range(max(n for n, _ in groups) + 1) if kept(r) <= budget), default=0)
    return rank, 1 - kept(rank) / prunable_params(params, basis)


def total_params(params: Any) -> int:
    """Number of scalars in a pytree."""
    return sum(int(np.prod(np.shape(x), dtype=np.int64)) for x in jax.tree.leaves(params))


def report(params: Mapping[str, Any], gate: GateConfig = DEFAULT_GATE, plan: Plan | None = None) -> list[LayerRow]:
    """Per-layer report: kind, shape, kept rank, params and FLOPs per token.

    Works on gated params (ranks counted with the deterministic mask) and on
    shrunk ones. Pass the shrunk model's ``plan`` to also list layers that
    surgery reduced to a bias.
    """
    rows = [row for path, node, layout in layer_nodes(params) for row in layout.rows(path, node, gate)]
    seen = {r.path for r in rows}
    for path, spec in (plan.layers if plan is not None else ()):
        empty = (isinstance(spec, FactorizedSpec) and spec.rank == 0) or (
            isinstance(spec, InputGatedSpec) and spec.keep == ()
        )
        if empty and path not in seen:
            node = node_at(params, path) or {}
            n_out = int(np.shape(node["bias"])[0]) if "bias" in node else 0
            rows.append(LayerRow(path, "bias_only", (0, n_out), 0, 0, n_out, 0, False))
    return rows


def format_report(rows: list[LayerRow]) -> str:
    """Fixed-width text table of :func:`report` rows, with totals."""
    header = f"{'layer':<40} {'kind':<12} {'in x out':>13} {'rank':>11} {'params':>11} {'FLOPs/tok':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = f"{r.shape[0]}x{r.shape[1]}"
        rank = f"{r.rank}/{r.full_rank}"
        lines.append(
            f"{r.path or '<root>':<40} {r.kind:<12} {shape:>13} {rank:>11} {r.params:>11,} {r.flops_per_token:>11,}"
        )
    lines.append("-" * len(header))
    total_p = sum(r.params for r in rows)
    total_f = sum(r.flops_per_token for r in rows)
    lines.append(f"{'total':<40} {'':<12} {'':>13} {'':>11} {total_p:>11,} {total_f:>11,}")
    return "\n".join(lines)
