"""Flax NNX support: flaxprune's layers as native ``nnx.Module``s, and the NNX pruning workflow.

Users write ``from flaxprune import nnx as fpx`` and swap ``nnx.Linear`` for
``fpx.FactorizedDense`` (or ``fpx.InputGatedDense``; ``nnx.Embed`` and the
output layer for ``fpx.AdaptiveEmbedding`` / ``fpx.AdaptiveSoftmax``), train
with ``nnx.Optimizer(fpx.Trainable(model), fpx.flop_optimizer(...),
wrt=nnx.Param)`` toward a target sparsity, and cut with ``fpx.shrink(model)``.

Why native modules rather than ``nnx.bridge.ToNNX`` around the Linen layers:

* **One formula, one name for each param.** The layers call the pure
  functions the Linen layers call (:func:`flaxprune.gates.sample` and
  :func:`~flaxprune.gates.deterministic_mask`; from :mod:`flaxprune.layers`
  the forward math ``factorized_apply``, ``input_gated_apply``,
  ``adaptive_embed``, ``adaptive_log_probs`` and ``adaptive_nll``, the spec
  checks ``check_factorized_spec`` / ``check_adaptive_spec``,
  ``adaptive_clusters`` and the spec dataclasses) and hold
  their params under the Linen names (``P``, ``Q``, ``bias``, ``log_alpha``,
  ``embedding_0``, ...), so ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` is
  a params tree that :mod:`flaxprune.size`, :func:`flaxprune.shrink` and the
  optimizer's gate/weight partition take unchanged. A ``ToNNX`` wrapper keeps
  those names too, but has no shapes until ``nnx.bridge.lazy_init`` runs it on
  a sample input, and each wrapped Linen module sits at the root of its own
  scope: its plan entry would be keyed ``''`` in every wrapper, so a model's
  plan would have to be split by hand into one plan per wrapper.
* **NNX's own randomness and modes.** A Linen layer in a bridge draws from
  Linen's ``make_rng``; here a layer keeps a fork of the ``gates`` stream of
  its ``nnx.Rngs`` like ``nnx.Dropout``, accepts ``rngs=`` per call (a stream
  or a key), and follows ``deterministic`` through ``model.eval()`` /
  ``model.train()`` / ``nnx.view``.
* **Surgery on structure.** A layer's structure is its spec (the value a
  Linen plan holds for it), a static attribute: ``shrink`` gives a clone's
  layers their new specs and params in place, so any user model, whatever
  its constructor, comes back smaller with no factory and no plan threaded
  through it. With a bridge, shrinking means building a new Linen module
  from a new plan for every wrapper and initialising it again.

What the layers add to those functions is NNX's: params as attributes, the
gate streams, the modes. A tied softmax takes its embedding per call
(``embedding=``) instead of holding it: see :mod:`flaxprune.nnx.adaptive`.
"""

from flaxprune.layers import adaptive_log_probs, factorized_apply, input_gated_apply
from flaxprune.nnx.adaptive import AdaptiveEmbedding, AdaptiveSoftmax
from flaxprune.nnx.base import GATES_RNG, GatedLayer
from flaxprune.nnx.factorized import FactorizedDense
from flaxprune.nnx.input_gated import InputGatedDense
from flaxprune.nnx.size import (
    expected_params,
    expected_sparsity,
    hard_params,
    hard_sparsity,
    prunable_params,
    report,
    straight_through_sparsity,
    total_params,
)
from flaxprune.nnx.state import gate_of, layers_of, params_of, plan_of
from flaxprune.nnx.surgery import shrink
from flaxprune.nnx.training import (
    CONSTRAINTS,
    Multipliers,
    Trainable,
    flop_optimizer,
    held_sparsity,
    make_train_step,
    penalty,
)

__all__ = [
    "CONSTRAINTS",
    "GATES_RNG",
    "AdaptiveEmbedding",
    "AdaptiveSoftmax",
    "FactorizedDense",
    "GatedLayer",
    "InputGatedDense",
    "Multipliers",
    "Trainable",
    "adaptive_log_probs",
    "expected_params",
    "expected_sparsity",
    "factorized_apply",
    "flop_optimizer",
    "gate_of",
    "hard_params",
    "hard_sparsity",
    "held_sparsity",
    "input_gated_apply",
    "layers_of",
    "make_train_step",
    "params_of",
    "penalty",
    "plan_of",
    "prunable_params",
    "report",
    "shrink",
    "straight_through_sparsity",
    "total_params",
]
