"""One sparsity for every pruning method: the share of the dense reference model's prunable weights that are gone.

Each method prunes a different unit (a rank-1 component, an input, a weight,
a block, a diagonal entry) of a differently built layer (factorized or
dense), so each has its own natural count. To compare them at equal budgets
(the FLOP paper's study), every model is counted against the same *dense
reference*: the plain dense matrices ``[in, out]`` of the pruned layers
(``shapes``, e.g. :attr:`flaxprune.models.SRUConfig.prunable_shapes`).
A layer node keeps (``Layout.kept_weights``):

* a dense or masked-dense kernel (AGP, the export of L0): its non-zero entries;
* a kernel with a gate per weight or per ``b x b`` block: its open gates
  times the weights each controls;
* a factorized ``P diag(z) Q`` (FLOP, structured AGP): ``min(k (in + out),
  in * out)`` for ``k`` kept components (what surgery delivers);
* an input-gated kernel: its open inputs times ``out``;
* nothing at all (a layer its plan says surgery cut to nothing): 0.

``sparsity = 1 - sum(kept) / sum(in * out)``. A 70% FLOP model and a 70%
AGP model keep the same number of prunable weights. Pure functions of the
params; jit-compatible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from flaxprune.param_tree import layout_of, node_at
from flaxprune.plan import plan_of
from flaxprune.size import gate_of

__all__ = ["kept_weights", "reference_params", "reference_sparsity"]

Shapes = Mapping[str, tuple[int, int]]


def reference_params(shapes: Shapes) -> int:
    """The dense reference's prunable weights: ``sum(in * out)`` over ``shapes``."""
    if not shapes:
        raise ValueError("reference_params: shapes is empty; pass {module path: (in, out)} of the pruned matrices.")
    return sum(int(n_in) * int(n_out) for n_in, n_out in shapes.values())


def kept_weights(params: Mapping[str, Any], gate: Any, shapes: Shapes) -> jax.Array:
    """The dense reference's weights that the layers at ``shapes``' paths still hold (an int scalar).

    Args:
      params: a model's params (gated, AGP-masked or reduced).
      gate: the model's gate settings (its config, plan or ``GateConfig``; the eval mask decides what is kept).
      shapes: ``{module path: (in, out)}`` of the dense reference's pruned matrices.

    Raises:
      ValueError: for a path with no layer in the params (unless the model's plan, when ``gate`` is the
        model's config or plan, says surgery cut it to nothing), or a layer flaxprune does not count.
    """
    cfg = gate_of(gate, "kept_weights")
    plan = plan_of(gate)
    total = jnp.zeros((), jnp.int32)
    for path, (n_in, n_out) in shapes.items():
        node = node_at(params, path)
        layout = layout_of(node, path)
        if layout is None:
            if plan is not None and plan.spec(path) is not None and not _holds_weights(node):
                continue  # surgery cut it to nothing (a bias at most): it keeps no weight
            found = "no node" if node is None else f"no layer weights ({sorted(map(str, node))})"
            raise ValueError(
                f"kept_weights: shapes names '{path}', but the params hold {found} there and the model's plan does "
                "not say it was cut to nothing; pass the module paths of the pruned layers (e.g. 'layers_0/W') and "
                "the model's config as gate."
            )
        if layout.kept_weights is None:
            raise ValueError(
                f"kept_weights: the {layout.kind} layer at '{path}' has no dense-reference count; "
                "only dense, factorized, input-gated and gated-kernel layers are counted."
            )
        total = total + jnp.minimum(layout.kept_weights(node, cfg), int(n_in) * int(n_out)).astype(jnp.int32)
    return total


def _holds_weights(node: Any) -> bool:
    return isinstance(node, Mapping) and any(k != "bias" for k in node)


def reference_sparsity(params: Mapping[str, Any], gate: Any, shapes: Shapes) -> jax.Array:
    """``1 - kept_weights / reference_params``: the sparsity every method is measured by (float32)."""
    return 1.0 - kept_weights(params, gate, shapes).astype(jnp.float32) / reference_params(shapes)
