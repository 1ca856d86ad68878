"""Size accounting of an NNX model: :mod:`flaxprune.size` on its params, with its own gate settings.

Each function takes an ``nnx.Module`` (its ``nnx.Param`` state is read, and
its layers' :class:`~flaxprune.GateConfig` decides the eval mask), or its
state / pure params dict together with ``gate=`` (a ``GateConfig`` or a
``Plan``, e.g. ``plan_of(model)``), and returns what the Linen function of the
same name returns for the same params. The expected counts are
differentiable, so ``expected_sparsity(model)`` inside ``nnx.grad`` is the
penalty's ``s_hat`` (FLOP, Wang et al., 2020, Sec. 3.3).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from flaxprune import size as linen_size
from flaxprune.layers import LayerRow
from flaxprune.nnx.state import gate_of, params_of, plan_of

__all__ = [
    "expected_params",
    "expected_sparsity",
    "hard_params",
    "hard_sparsity",
    "prunable_params",
    "report",
    "straight_through_sparsity",
    "total_params",
]


def _params_and_gate(source: Any, gate: Any, fn: str) -> tuple[dict[str, Any], Any]:
    """The params, and the gate settings: the model's (checked against ``gate`` if both), or ``gate``."""
    params = params_of(source, fn)
    if not isinstance(source, nnx.Module):
        if gate is None:
            raise ValueError(
                f"{fn}: gate=None, but a state or params dict carries no gate settings; pass the model itself, "
                "or gate=flaxprune.nnx.plan_of(model) (or its GateConfig)."
            )
        return params, gate
    own = gate_of(source, fn)
    if gate is not None and linen_size.gate_of(gate, fn) != own:
        raise ValueError(f"{fn}: gate={gate!r} disagrees with the model's layers ({own!r}); pass one of them.")
    return params, own


def prunable_params(source: Any, basis: str = "factors") -> int:
    """The weights some gate controls (``'factors'``) or the dense layers they stand for (``'dense'``)."""
    return linen_size.prunable_params(params_of(source, "prunable_params"), basis)


def expected_params(source: Any, gate: Any = None) -> jax.Array:
    """Expected number of prunable weights kept, ``sum_k c_k P(z_k != 0)``; differentiable."""
    params, gate = _params_and_gate(source, gate, "expected_params")
    return linen_size.expected_params(params, gate)


def expected_sparsity(
    source: Any, gate: Any = None, basis: str = "factors", *, reference: int | None = None
) -> jax.Array:
    """``1 - expected_params / prunable_params(basis)``; differentiable in every ``log_alpha``."""
    params, gate = _params_and_gate(source, gate, "expected_sparsity")
    return linen_size.expected_sparsity(params, gate, basis, reference=reference)


def hard_params(source: Any, gate: Any = None, basis: str = "factors") -> jax.Array:
    """Number of prunable weights the evaluation mask keeps."""
    params, gate = _params_and_gate(source, gate, "hard_params")
    return linen_size.hard_params(params, gate, basis)


def hard_sparsity(source: Any, gate: Any = None, basis: str = "factors", *, reference: int | None = None) -> jax.Array:
    """``1 - hard_params / prunable_params``: the sparsity :func:`flaxprune.nnx.shrink` delivers."""
    params, gate = _params_and_gate(source, gate, "hard_sparsity")
    return linen_size.hard_sparsity(params, gate, basis, reference=reference)


def straight_through_sparsity(
    source: Any, gate: Any = None, basis: str = "factors", *, reference: int | None = None
) -> jax.Array:
    """The hard sparsity's value with the expected sparsity's gradient: what the multipliers hold to the target."""
    params, gate = _params_and_gate(source, gate, "straight_through_sparsity")
    return linen_size.straight_through_sparsity(params, gate, basis, reference=reference)


def report(source: Any, gate: Any = None) -> list[LayerRow]:
    """Per-layer rows (kind, shape, kept rank, params, FLOPs per token), as :func:`flaxprune.report`.

    For a model the plan comes from its layers, so layers that surgery cut
    to a bias are listed; print with :func:`flaxprune.format_report`.
    """
    params, gate = _params_and_gate(source, gate, "report")
    if isinstance(source, nnx.Module):
        return linen_size.report(params, plan_of(source))
    return linen_size.report(params, gate)


def total_params(source: Any) -> int:
    """Number of scalars in the model's ``nnx.Param`` state (or in a state / params dict)."""
    return linen_size.total_params(params_of(source, "total_params"))
