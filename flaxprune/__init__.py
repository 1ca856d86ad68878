"""flaxprune: structured pruning by factorized low-rank pruning (FLOP) in JAX/Flax.

Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models",
EMNLP 2020 (arXiv 1910.04732). Users write ``import flaxprune as fp`` and use
``fp.FactorizedDense``, ``fp.flop_optimizer``, ``fp.shrink``, ...
"""

from flaxprune.gates import (
    GateConfig,
    HardConcreteGate,
    deterministic_mask,
    expected_l0,
    log_alpha_init,
    prob_nonzero,
    sample,
)
from flaxprune.layers import (
    FactorizedDense,
    FactorizedSpec,
    InputGatedDense,
    InputGatedSpec,
    LayerRow,
    default_rank,
)
from flaxprune.plan import Plan
from flaxprune.size import (
    expected_params,
    expected_sparsity,
    format_report,
    gate_groups,
    hard_params,
    hard_sparsity,
    prunable_params,
    report,
    total_params,
)
from flaxprune.surgery import factorize, factorize_params, shrink

__version__ = "0.1.0"

__all__ = [
    "FactorizedDense",
    "FactorizedSpec",
    "GateConfig",
    "HardConcreteGate",
    "InputGatedDense",
    "InputGatedSpec",
    "LayerRow",
    "Plan",
    "default_rank",
    "deterministic_mask",
    "expected_l0",
    "expected_params",
    "expected_sparsity",
    "factorize",
    "factorize_params",
    "format_report",
    "gate_groups",
    "hard_params",
    "hard_sparsity",
    "log_alpha_init",
    "prob_nonzero",
    "prunable_params",
    "report",
    "sample",
    "shrink",
    "total_params",
]
