"""Gated and factorized Flax layers, and the layouts that describe their params.

Size accounting, surgery and the spectral start read a model from its params
alone, recognising each layer by the names of the params in its node (one
module's dict). These names are reserved; a node that holds one must have
exactly the structure beside it, or every walk over the params refuses it
with the path (:func:`flaxprune.param_tree.layout_of`):

=================================  ==============================================================
reserved name in a node            the node must hold exactly
=================================  ==============================================================
``P`` or ``Q``                     ``FactorizedDense``: ``P: [in, rank]``, ``Q: [rank, out]``;
                                   optionally ``bias: [out]``, ``log_alpha: [rank]``, ``diag: [rank]``
``kernel`` beside ``log_alpha``    ``InputGatedDense``: ``kernel: [in, out]``, ``log_alpha: [in]``;
                                   optionally ``bias: [out]``
``log_alpha_weight``               ``WeightGatedDense``: ``kernel: [in, out]``,
                                   ``log_alpha_weight: [in, out]``; optionally ``bias: [out]``
``log_alpha_block``                ``BlockGatedDense``: ``kernel: [in, out]``,
                                   ``log_alpha_block: [in / b_in, out / b_out]``; optionally ``bias``
a 2-D ``kernel``                   a dense layer (``nn.Dense``, or what surgery leaves):
                                   ``kernel: [in, out]``; optionally ``bias: [out]``
``embedding_i``, ``projection_i``, adaptive embedding / softmax: per cluster ``i``
``log_alpha_i`` (i = 0, 1, ...)    ``embedding_i: [n_i, d_i]`` with ``projection_i: [d_i, d_proj]``
                                   (optionally ``log_alpha_i: [d_i]``) or neither; ``bias_i: [n_i]``,
                                   ``cluster_kernel``, ``cluster_bias`` in a softmax
any name starting ``log_alpha``    a gate: only in one of the layers above
=================================  ==============================================================

Only params (leaves) count: a submodule may be called ``P``. Everything else
is no layer and is left alone (counted in the report's ``'other'`` row):
LayerNorm's ``scale`` and ``bias``, ``nn.Embed``'s ``embedding``, a kernel
that is not 2-D (``nn.Conv``), a tied softmax's ``bias_i`` and cluster logits.
"""

from flaxprune.layers.adaptive import (
    AdaptiveEmbedding,
    AdaptiveSoftmax,
    AdaptiveSpec,
    adaptive_clusters,
    adaptive_embed,
    check_adaptive_spec,
    nll,
)
from flaxprune.layers.adaptive_loss import adaptive_log_probs, adaptive_nll
from flaxprune.layers.adaptive_layout import ADAPTIVE_LAYOUT
from flaxprune.layers.dense_layout import DENSE_LAYOUT
from flaxprune.layers.factorized import (
    FACTORIZED_LAYOUT,
    FactorizedDense,
    FactorizedSpec,
    check_factorized_rank,
    check_factorized_spec,
    default_rank,
    factorized_apply,
)
from flaxprune.layers.gated_kernel import (
    BLOCK_GATED_LAYOUT,
    WEIGHT_GATED_LAYOUT,
    BlockGatedDense,
    MaskedDenseSpec,
    WeightGatedDense,
)
from flaxprune.layers.input_gated import INPUT_GATED_LAYOUT, InputGatedDense, InputGatedSpec, input_gated_apply
from flaxprune.layers.layout import GateGroup, LayerRow, Layout

# First match wins: gated kinds before the plain dense kernel.
LAYOUTS: tuple[Layout, ...] = (
    FACTORIZED_LAYOUT,
    INPUT_GATED_LAYOUT,
    WEIGHT_GATED_LAYOUT,
    BLOCK_GATED_LAYOUT,
    ADAPTIVE_LAYOUT,
    DENSE_LAYOUT,
)

__all__ = [
    "ADAPTIVE_LAYOUT",
    "BLOCK_GATED_LAYOUT",
    "DENSE_LAYOUT",
    "FACTORIZED_LAYOUT",
    "INPUT_GATED_LAYOUT",
    "LAYOUTS",
    "AdaptiveEmbedding",
    "AdaptiveSoftmax",
    "AdaptiveSpec",
    "BlockGatedDense",
    "FactorizedDense",
    "FactorizedSpec",
    "GateGroup",
    "InputGatedDense",
    "InputGatedSpec",
    "LayerRow",
    "Layout",
    "MaskedDenseSpec",
    "WEIGHT_GATED_LAYOUT",
    "WeightGatedDense",
    "adaptive_clusters",
    "adaptive_embed",
    "adaptive_log_probs",
    "adaptive_nll",
    "check_adaptive_spec",
    "check_factorized_rank",
    "check_factorized_spec",
    "default_rank",
    "factorized_apply",
    "input_gated_apply",
    "nll",
]
