"""flaxprune: structured pruning by factorized low-rank pruning (FLOP) in JAX/Flax.

Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models",
EMNLP 2020 (arXiv 1910.04732). Users write ``import flaxprune as fp`` and use
``fp.FactorizedDense``, ``fp.flop_optimizer``, ``fp.shrink``, ...
"""

from flaxprune.gates import (
    GATE_PARAM,
    GateConfig,
    HardConcreteGate,
    deterministic_mask,
    expected_l0,
    is_gate_param,
    log_alpha_init,
    prob_nonzero,
    sample,
)
from flaxprune.layers import (
    AdaptiveEmbedding,
    AdaptiveSoftmax,
    AdaptiveSpec,
    BlockGatedDense,
    FactorizedDense,
    FactorizedSpec,
    InputGatedDense,
    InputGatedSpec,
    LayerRow,
    MaskedDenseSpec,
    WeightGatedDense,
    default_rank,
)
from flaxprune.lagrangian import (
    flop_optimizer,
    gradient_ascent,
    init_multipliers,
    noam_schedule,
    param_labels,
    penalty,
    ramp_progress,
    target_schedule,
)
from flaxprune.plan import Plan
from flaxprune.size import (
    expected_params,
    expected_sparsity,
    format_report,
    gate_groups,
    hard_params,
    hard_sparsity,
    open_sparsity,
    prunable_params,
    report,
    straight_through_sparsity,
    total_params,
    uniform_rank,
)
from flaxprune.sparsity_control import SparsityController, SparsityControllerState, sparsity_controller
from flaxprune.spectral import component_scales, spectral_gates, spectral_log_alpha
from flaxprune.surgery import factorize, factorize_params, shrink

__version__ = "0.1.0"

__all__ = [
    "GATE_PARAM",
    "AdaptiveEmbedding",
    "AdaptiveSoftmax",
    "AdaptiveSpec",
    "BlockGatedDense",
    "FactorizedDense",
    "FactorizedSpec",
    "GateConfig",
    "HardConcreteGate",
    "InputGatedDense",
    "MaskedDenseSpec",
    "WeightGatedDense",
    "InputGatedSpec",
    "LayerRow",
    "Plan",
    "SparsityController",
    "SparsityControllerState",
    "component_scales",
    "default_rank",
    "deterministic_mask",
    "expected_l0",
    "expected_params",
    "expected_sparsity",
    "factorize",
    "factorize_params",
    "flop_optimizer",
    "format_report",
    "gate_groups",
    "gradient_ascent",
    "hard_params",
    "hard_sparsity",
    "init_multipliers",
    "is_gate_param",
    "log_alpha_init",
    "noam_schedule",
    "open_sparsity",
    "param_labels",
    "penalty",
    "prob_nonzero",
    "prunable_params",
    "report",
    "sample",
    "shrink",
    "sparsity_controller",
    "straight_through_sparsity",
    "spectral_gates",
    "spectral_log_alpha",
    "ramp_progress",
    "target_schedule",
    "total_params",
    "uniform_rank",
]
