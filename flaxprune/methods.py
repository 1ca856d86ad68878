"""The pruning methods a run can select (``config.prune.method``), and what each one is.

=====================  ==========================================  ====================================
method                 the pruned matrices are                      pruned by
=====================  ==========================================  ====================================
``'flop'``             ``P diag(z) Q`` (the first SRU layer:        hard-concrete gates, the Lagrangian
                       gates on its inputs), FLOP                  toward the target (Wang et al. 2020)
``'agp'``              dense kernels                                magnitude, AGP's cubic schedule
                                                                    (Zhu & Gupta 2017)
``'agp_structured'``   ``P diag(d) Q`` with a learned real ``d``    the magnitude of ``d``, same schedule
                                                                    (the FLOP paper's structured AGP)
``'l0'``               dense kernels, a gate per weight             hard-concrete gates, the Lagrangian
``'l0_block'``         dense kernels, a gate per ``b x b`` block    hard-concrete gates, the Lagrangian
=====================  ==========================================  ====================================

The gated methods (``flop``, ``l0``, ``l0_block``) keep their pruning state
in the params (``log_alpha*``) and the multipliers; the AGP methods keep
their masks in the optimizer state (:func:`flaxprune.agp.agp_pruning`).
Every method is measured by the same sparsity, that of the dense reference
model (:mod:`flaxprune.dense_reference`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AGP_METHODS", "GATED_METHODS", "METHODS", "check_method"]

METHODS = ("flop", "agp", "agp_structured", "l0", "l0_block")
GATED_METHODS = ("flop", "l0", "l0_block")
AGP_METHODS = ("agp", "agp_structured")


def check_method(where: str, method: Any) -> str:
    """``method`` if it names a method, else one line naming it and the accepted ones."""
    if method not in METHODS:
        raise ValueError(f"{where}: method={method!r} is not a pruning method; accepted: {list(METHODS)}.")
    return method
