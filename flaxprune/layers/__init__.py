"""Gated and factorized Flax layers, and the layouts that describe their params."""

from flaxprune.layers.adaptive import AdaptiveEmbedding, AdaptiveSoftmax, AdaptiveSpec, adaptive_clusters, nll
from flaxprune.layers.adaptive_layout import ADAPTIVE_LAYOUT
from flaxprune.layers.dense_layout import DENSE_LAYOUT
from flaxprune.layers.factorized import FACTORIZED_LAYOUT, FactorizedDense, FactorizedSpec, default_rank
from flaxprune.layers.input_gated import INPUT_GATED_LAYOUT, InputGatedDense, InputGatedSpec
from flaxprune.layers.layout import GateGroup, LayerRow, Layout

# First match wins: gated kinds before the plain dense kernel.
LAYOUTS: tuple[Layout, ...] = (FACTORIZED_LAYOUT, INPUT_GATED_LAYOUT, ADAPTIVE_LAYOUT, DENSE_LAYOUT)

__all__ = [
    "ADAPTIVE_LAYOUT",
    "DENSE_LAYOUT",
    "FACTORIZED_LAYOUT",
    "INPUT_GATED_LAYOUT",
    "LAYOUTS",
    "AdaptiveEmbedding",
    "AdaptiveSoftmax",
    "AdaptiveSpec",
    "FactorizedDense",
    "FactorizedSpec",
    "GateGroup",
    "InputGatedDense",
    "InputGatedSpec",
    "LayerRow",
    "Layout",
    "adaptive_clusters",
    "default_rank",
    "nll",
]
