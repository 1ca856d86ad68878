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

The counts that read gates (expected and hard params, sparsity, the report)
take the gate settings from the model: pass its :class:`~flaxprune.Plan`,
its config (a dataclass with a ``plan`` field) or the plan's ``GateConfig``.
There is no default, since the eval mask (``'flop'`` or ``'clip'``) decides
which gates the hard count keeps, and a default that differs from the
model's would count what :func:`~flaxprune.shrink` does not cut. A gate
holding NaN makes the sparsity NaN, and the hard sparsity is NaN for an
infinite gate too (these run under ``jit``, where nothing can raise), never
a plausible number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.gates import GateConfig, deterministic_mask, prob_nonzero
from flaxprune.layers import FactorizedSpec, GateGroup, InputGatedSpec, LayerRow
from flaxprune.layers.layout import check_finite_gates
from flaxprune.param_tree import layer_nodes, node_at
from flaxprune.plan import Plan, plan_of

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
    "straight_through_sparsity",
    "total_params",
    "uniform_rank",
]


BASES = ("factors", "dense")
OTHER_PATH = "(other params)"  # the report's row of every param outside a layer node

# What the gate-reading counts accept as the gate settings: a GateConfig, a Plan, or a model config with a plan.
GateSource = Any


def gate_of(gate: GateSource, fn: str) -> GateConfig:
    """The ``GateConfig`` of ``gate``: itself, a plan's ``gate``, or a model config's ``plan.gate``.

    Raises:
      ValueError: for anything else, naming ``fn`` and the value.
    """
    if isinstance(gate, GateConfig):
        return gate
    plan = plan_of(gate)
    if plan is None:
        shown = repr(gate) if len(repr(gate)) <= 80 else repr(gate)[:77] + "..."
        raise ValueError(
            f"{fn}: gate={shown} must be a flaxprune.GateConfig, a Plan, or the model's config (a dataclass "
            "instance with a 'plan: Plan' field): pass the model's own (e.g. model.plan), so that the count "
            "uses the eval mask the model evaluates and shrink cuts with."
        )
    return plan.gate


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
            f"{fn}: params hold no gated layer (no 'log_alpha*' next to factorized, input-gated, "
            "weight- or block-gated or adaptive weights); build the model with gated=True, or pass the params "
            "collection of a gated model."
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


def _all_finite(groups: list[tuple[str, GateGroup]]) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g.log_alpha)) for _, g in groups]))


def expected_params(params: Mapping[str, Any], gate: GateSource) -> jax.Array:
    """Expected number of prunable weights kept, ``sum_k c_k P(z_k != 0)``; differentiable.

    Args:
      params: params of a gated model.
      gate: the model's gate settings: its ``Plan``, its config (with a
        ``plan`` field) or the plan's ``GateConfig``.

    Returns:
      A float scalar; NaN where a gate holds NaN (an infinite gate counts as surely open or shut).

    Raises:
      ValueError: for a ``gate`` that is none of these, or params without gates.
    """
    cfg = gate_of(gate, "expected_params")
    groups = _groups_or_raise(params, "expected_params")
    kept = sum(g.cost_per_gate * jnp.sum(prob_nonzero(g.log_alpha, cfg)) for _, g in groups)
    return kept  # a NaN gate gives NaN through prob_nonzero; no select here, which would change XLA's fusion


def hard_params(params: Mapping[str, Any], gate: GateSource, basis: str = "factors") -> jax.Array:
    """Number of prunable weights kept by the deterministic (eval) mask; jit-compatible.

    With ``basis='dense'`` a node never counts more than its dense size (what
    surgery delivers by merging factors). An integer count cannot be NaN:
    where a gate holds NaN or inf the count means nothing, and
    :func:`hard_sparsity` is NaN.

    Args:
      params: params of a gated model.
      gate: the model's gate settings: its ``Plan``, its config (with a
        ``plan`` field) or the plan's ``GateConfig``, whose ``eval_mask``
        decides which gates are kept.
      basis: ``'factors'`` or ``'dense'``.

    Raises:
      ValueError: for a ``gate`` that is none of these, an unknown basis, or params without gates.
    """
    cfg = gate_of(gate, "hard_params")
    _check_basis(basis, "hard_params")
    _groups_or_raise(params, "hard_params")
    total = jnp.zeros((), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    for groups, dense in _gated_nodes(params):
        kept = sum(g.cost_per_gate * jnp.count_nonzero(deterministic_mask(g.log_alpha, cfg)) for g in groups)
        total = total + (jnp.minimum(kept, dense) if basis == "dense" else kept)
    return total


def _reference(params: Mapping[str, Any], basis: str, reference: int | None, fn: str) -> int:
    """The count a sparsity divides by: ``reference``, or the params' own prunable count."""
    if reference is None:
        return prunable_params(params, basis)
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) or reference < 1:
        raise ValueError(
            f"{fn}: reference={reference!r} must be None (these params' own prunable count) or an integer >= 1 "
            "(the prunable count of the model before compaction)."
        )
    return int(reference)


def expected_sparsity(
    params: Mapping[str, Any], gate: GateSource, basis: str = "factors", *, reference: int | None = None
) -> jax.Array:
    """``1 - expected_params / prunable_params(basis)``; differentiable in every ``log_alpha``.

    ``gate`` as in :func:`expected_params`; NaN where a gate holds NaN.
    ``reference``: the prunable count to divide by instead of the params'
    own: a model compacted during training (:mod:`flaxprune.compaction`)
    is measured against the model it started as, which
    ``prunable_params(initial_params, basis)`` gives.
    """
    cfg = gate_of(gate, "expected_sparsity")
    _check_basis(basis, "expected_sparsity")
    return 1.0 - expected_params(params, cfg) / _reference(params, basis, reference, "expected_sparsity")


def hard_sparsity(
    params: Mapping[str, Any], gate: GateSource, basis: str = "factors", *, reference: int | None = None
) -> jax.Array:
    """``1 - hard_params / prunable_params``: the sparsity surgery will deliver.

    ``gate`` as in :func:`hard_params`; NaN where a gate holds NaN or inf
    (surgery refuses such gates). ``reference`` as in :func:`expected_sparsity`.
    """
    cfg = gate_of(gate, "hard_sparsity")
    _check_basis(basis, "hard_sparsity")
    sparsity = 1.0 - hard_params(params, cfg, basis) / _reference(params, basis, reference, "hard_sparsity")
    return jnp.where(_all_finite(gate_groups(params)), sparsity, jnp.nan)


def straight_through_sparsity(
    params: Mapping[str, Any],
    gate: GateSource,
    basis: str = "factors",
    *,
    reference: int | None = None,
    weight: float | jax.Array = 1.0,
) -> jax.Array:
    """The expected sparsity moved by ``weight`` of its gap to the hard one: ``e + weight * stop_gradient(h - e)``.

    With ``weight=1`` the hard sparsity's value with the expected sparsity's
    gradient: what a constraint on the size surgery delivers differentiates.
    The hard sparsity (:func:`hard_sparsity`) is what the multipliers should
    hold to the target, but it is piecewise constant in ``log_alpha``; the
    expected sparsity (:func:`expected_sparsity`) has the gradient, but on
    the ``'dense'`` basis it also counts the factors of projections that
    surgery merges back into their smaller dense matrix, so held at the
    target it delivers more sparsity than asked (0.555 for 0.5 on MiniLM).
    In the penalty ``lambda_1 (s - t)`` this ``s`` gives the multiplier the
    delivered error and the gates the expected sparsity's pull. A ``weight``
    rising from 0 to 1 along the target's ramp (a run's ``prune.constraint=
    'hard'``) starts from the expected sparsity, smooth from the open model's
    value, where the hard one sits flat until whole projections fall below
    their merge point. Other arguments as :func:`hard_sparsity`.
    """
    expected = expected_sparsity(params, gate, basis, reference=reference)
    hard = hard_sparsity(params, gate, basis, reference=reference)
    return expected + weight * jax.lax.stop_gradient(hard - expected)


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


def _report_plan(gate: GateSource, cfg: GateConfig, plan: Plan | None) -> Plan | None:
    """The plan :func:`report` lists bias-only layers from: ``plan``, else the one ``gate`` holds."""
    if plan is not None and not isinstance(plan, Plan):
        raise ValueError(f"report: plan={plan!r} must be a flaxprune.Plan or None.")
    held = plan_of(gate)
    if plan is not None and held is not None and held != plan:
        raise ValueError("report: gate= holds a plan and plan= another; pass the model's plan (or config) once.")
    plan = held if plan is None else plan
    if plan is not None and plan.gate != cfg:
        raise ValueError(
            f"report: plan.gate={plan.gate!r} disagrees with gate={cfg!r}; pass the plan (or the model's config) "
            "alone, so the gate settings come from one place."
        )
    return plan


def report(params: Mapping[str, Any], gate: GateSource, plan: Plan | None = None) -> list[LayerRow]:
    """Per-layer report: kind, shape, kept rank, params and FLOPs per token.

    Works on gated params (ranks counted with the deterministic mask; the
    params a row counts are those surgery keeps) and on shrunk ones. Every
    param is counted: a last row of kind ``'other'`` (path
    ``'(other params)'``) holds those outside any layer node (norms, plain
    embeddings, ...), so on shrunk params the rows sum to
    :func:`total_params`.

    Args:
      params: the model's params collection.
      gate: the model's ``Plan`` or config (with a ``plan`` field), whose
        plan also lists the layers surgery reduced to a bias; or a
        ``GateConfig``, with the plan, if any, in ``plan``.
      plan: the plan, where ``gate`` is a ``GateConfig``; it must hold that
        same ``GateConfig``.

    Returns:
      The rows, in path order, then the bias-only rows and the ``'other'`` row.

    Raises:
      ValueError: for a ``gate`` or ``plan`` that is none of these, two that
        disagree, a gate that holds NaN or inf, or a node that misuses a
        name reserved for a layer.
    """
    cfg = gate_of(gate, "report")
    plan = _report_plan(gate, cfg, plan)
    rows, counted = [], 0
    for path, node, layout in layer_nodes(params):
        check_finite_gates("report", path, layout.groups(node))
        rows.extend(layout.rows(path, node, cfg))
        counted += total_params(node)
    seen = {r.path for r in rows}
    for path, spec in (plan.layers if plan is not None else ()):
        empty = (isinstance(spec, FactorizedSpec) and spec.rank == 0) or (
            isinstance(spec, InputGatedSpec) and spec.keep == ()
        )
        if empty and path not in seen:
            node = node_at(params, path) or {}
            n_out = int(np.shape(node["bias"])[0]) if "bias" in node else 0
            rows.append(LayerRow(path, "bias_only", (0, n_out), 0, 0, n_out, 0, False))
            counted += n_out
    rows.append(LayerRow(OTHER_PATH, "other", (0, 0), 0, 0, total_params(params) - counted, 0, False))
    return rows


def format_report(rows: list[LayerRow]) -> str:
    """Fixed-width text table of :func:`report` rows, with totals (of every param, for a full report)."""
    header = f"{'layer':<40} {'kind':<12} {'in x out':>13} {'rank':>11} {'params':>11} {'FLOPs/tok':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = "" if r.kind == "other" else f"{r.shape[0]}x{r.shape[1]}"
        rank = "" if r.kind == "other" else f"{r.rank}/{r.full_rank}"
        lines.append(
            f"{r.path or '<root>':<40} {r.kind:<12} {shape:>13} {rank:>11} {r.params:>11,} {r.flops_per_token:>11,}"
        )
    lines.append("-" * len(header))
    total_p = sum(r.params for r in rows)
    total_f = sum(r.flops_per_token for r in rows)
    lines.append(f"{'total':<40} {'':<12} {'':>13} {'':>11} {total_p:>11,} {total_f:>11,}")
    return "\n".join(lines)
