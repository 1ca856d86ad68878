"""Compaction: training that gets faster as it prunes.

FLOP trains at the full factorized shapes and cuts the zero components only
at the end (:func:`flaxprune.shrink`). But a gate whose probability of being
non-zero, ``P(z_k != 0)`` (:func:`flaxprune.prob_nonzero`), has fallen below
a small threshold (say 1e-3) is sampled as zero in all but one step in a
thousand and is zero in the eval mask: its component costs compute in every
step and contributes (almost) nothing. Compaction removes such components for
good *while training goes on*: from the params and, at the same indices,
from every optimizer-state array that mirrors a param (Adam's moments), and
returns the plan of the smaller, still gated model, so the train step is
recompiled for smaller static shapes, as ``shrink`` does for inference.

Unlike ``shrink``, compaction keeps the gates (of the components that stay),
never merges factors into a dense kernel and never folds masks into the
weights: the compacted model is the same gated model minus some components,
and training continues on it. A layer keeps at least its most open
component, so it stays a gated layer (``shrink`` can still remove it at the
end). Kinds whose layout has no ``compact`` (the adaptive embedding and
softmax) are left as they are.

What it changes: the components dropped had ``P(z != 0) < threshold``, so
the expected size (``sum_k c_k P(z_k != 0)``) moves by less than
``threshold`` times their cost, and each step's sampled masks differ from
an uncompacted run's only with that probability. The sparsity is measured
against the model before compaction (``reference=`` of
:func:`flaxprune.expected_sparsity` and :func:`flaxprune.hard_sparsity`),
so the target means the same thing throughout.

Usage (the training loop does this every ``prune.compact_every`` steps)::

    cut = compaction(trainable['params'], model_config, threshold=1e-3)
    if cut.dropped:
        trainable = cut.apply(trainable, prefix=('params',))
        opt_state = cut.apply(opt_state, prefix=('params',))
        model = Model(cut.config)   # recompile the step for the new shapes
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from flaxprune.gates import prob_nonzero
from flaxprune.layers.layout import check_finite_gates
from flaxprune.param_tree import layer_nodes
from flaxprune.plan import Plan, plan_of

__all__ = ["Compaction", "compaction"]


@dataclasses.dataclass(frozen=True)
class Compaction:
    """The components to drop, as index selections on params paths, and the compacted model's config.

    Attributes:
      config: the model config (or plan) whose plan builds the compacted model.
      dropped: ``{layer path: (components before, components after)}`` for
        every layer that loses components; empty when nothing is dropped.
      cuts: ``{(module names..., param name): (axis, kept indices, shape before)}``.
    """

    config: Any
    dropped: dict[str, tuple[int, int]]
    cuts: dict[tuple[str, ...], tuple[int, np.ndarray, tuple[int, ...]]]

    def apply(self, tree: Any, prefix: tuple[str, ...] = ()) -> Any:
        """``tree`` with every cut applied to the leaves at a cut param's path.

        A leaf is cut when the dict keys on its path end with ``prefix`` plus
        a cut param's path and it has that param's shape: so the params
        themselves, and every optimizer-state array that mirrors them (Adam's
        ``mu`` and ``nu``, wherever optax nests them), are cut alike, and
        nothing else (step counts, other groups' moments) is touched. Leaves
        come back as numpy arrays where cut, unchanged otherwise.

        Args:
          tree: the params, the trainable pytree, or an optimizer state.
          prefix: the keys above the params in ``tree`` (``('params',)`` for
            ``{'params': ..., 'lagrangian': ...}`` and its optimizer state).
        """
        cuts = {prefix + path: cut for path, cut in self.cuts.items()}
        depth = {len(k) for k in cuts}

        def cut_leaf(path, leaf):
            keys = tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
            for n in depth:
                found = cuts.get(keys[-n:]) if len(keys) >= n else None
                if found is not None and tuple(np.shape(leaf)) == found[2]:
                    axis, keep, _ = found
                    return np.take(np.asarray(jax.device_get(leaf)), keep, axis=axis)
            return leaf

        return jax.tree_util.tree_map_with_path(cut_leaf, tree)


def _check_threshold(threshold: Any) -> float:
    ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold)
    if not ok or not 0 < threshold < 1:
        raise ValueError(
            f"compaction: threshold={threshold!r} must be a number in (0, 1): components whose P(z != 0) is "
            "below it are dropped (e.g. 1e-3)."
        )
    return float(threshold)


def compaction(params: Mapping[str, Any], config: Any, *, threshold: float) -> Compaction:
    """Which gated components to drop (``P(z != 0) < threshold``) and the config of the model without them.

    Args:
      params: the gated model's params (``variables['params']``).
      config: the model's config (a dataclass with a ``plan``) or its :class:`~flaxprune.Plan`.
      threshold: in (0, 1).

    Returns:
      A :class:`Compaction`; ``apply`` it to the params and the optimizer
      state. Its ``config`` is ``config`` itself when nothing is dropped.

    Raises:
      ValueError: for a config without a plan, a threshold outside (0, 1),
        or a gate holding NaN or inf (naming it).
    """
    plan = plan_of(config)
    if plan is None:
        raise ValueError(
            f"compaction: config must be a flaxprune.Plan or a model config with a 'plan' field, got "
            f"{type(config).__name__}."
        )
    threshold = _check_threshold(threshold)
    specs, dropped, cuts = {}, {}, {}
    for path, node, layout in layer_nodes(params):
        groups = layout.groups(node)
        if layout.compact is None or len(groups) != 1:
            continue  # ungated, or a kind that is not compacted
        check_finite_gates("compaction", path, groups)
        p = np.asarray(jax.device_get(prob_nonzero(groups[0].log_alpha, plan.gate)))
        keep = np.flatnonzero(p >= threshold)
        if keep.size == 0:  # keep the most open component: the layer stays a gated layer
            keep = np.array([int(np.argmax(p))])
        if keep.size == p.size:
            continue
        axes, specs[path] = layout.compact(path, node, keep, plan.spec(path))
        dropped[path] = (int(p.size), int(keep.size))
        module = tuple(path.split("/")) if path else ()
        for name, axis in axes.items():
            cuts[module + (name,)] = (axis, keep, tuple(np.shape(node[name])))
    if not specs:
        return Compaction(config, {}, {})
    new_plan = plan.with_specs(specs)
    new_config = new_plan if isinstance(config, Plan) else dataclasses.replace(config, plan=new_plan)
    return Compaction(new_config, dropped, cuts)
