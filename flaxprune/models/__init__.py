"""Language models built from flaxprune layers, behind one small interface.

Every language model is a Linen module ``Model(config)`` with
``apply(variables, tokens [B, T], carry, deterministic) -> (logits [B, T, V], carry)``
and ``initial_carry(batch_size)``; a model with a ``token_nll(tokens, targets, carry, deterministic)``
method (the word-level SRU, whose adaptive softmax need not build every logit) trains and evaluates
through it; the carry (recurrent state or memory) has
batch as its leading axis. ``BertClassifier`` maps token ids, token types and
an attention mask to ``[B, num_labels]`` logits. Every config is a frozen
dataclass with ``vocab_size``, ``gated`` and ``plan`` fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flaxprune.gates import GateConfig
from flaxprune.layers import AdaptiveSpec, FactorizedSpec, InputGatedSpec, MaskedDenseSpec
from flaxprune.models.bert import BertClassifier, BertConfig
from flaxprune.models.sru import SRUConfig, SRULanguageModel
from flaxprune.models.transformer_xl import TransformerXL, TransformerXLConfig
from flaxprune.models.word_sru import WordSRUConfig, WordSRULanguageModel
from flaxprune.plan import Plan

__all__ = [
    "CONFIG_CLASSES",
    "MODELS",
    "BertClassifier",
    "BertConfig",
    "SRUConfig",
    "SRULanguageModel",
    "TransformerXL",
    "TransformerXLConfig",
    "WordSRUConfig",
    "WordSRULanguageModel",
    "build_model",
    "model_for",
]

# name -> (module class, config class)
MODELS: dict[str, tuple[type, type]] = {
    "sru": (SRULanguageModel, SRUConfig),
    "txl": (TransformerXL, TransformerXLConfig),
    "bert": (BertClassifier, BertConfig),
    "word_sru": (WordSRULanguageModel, WordSRUConfig),
}


# Every dataclass a saved model config may hold: what loading a checkpoint may rebuild, and nothing else.
CONFIG_CLASSES: tuple[type, ...] = (
    *(config_cls for _, config_cls in MODELS.values()),
    Plan,
    GateConfig,
    FactorizedSpec,
    InputGatedSpec,
    AdaptiveSpec,
    MaskedDenseSpec,
)


def build_model(name: str, **fields: Any) -> tuple[Any, Any]:
    """``(module, config)`` for a model name and its config fields.

    Raises:
      ValueError: for an unknown model name or config field.
    """
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is not a model; accepted: {sorted(MODELS)}.")
    module_cls, config_cls = MODELS[name]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"model config: unknown field(s) {unknown} for model {name!r}; accepted: {sorted(known)}.")
    config = config_cls(**fields)
    return module_cls(config), config


def model_for(config: Any) -> Any:
    """The module for a model config instance (e.g. one that ``shrink`` returned)."""
    for module_cls, config_cls in MODELS.values():
        if isinstance(config, config_cls):
            return module_cls(config)
    raise ValueError(f"model_for: {type(config).__name__} is not a known model config.")
