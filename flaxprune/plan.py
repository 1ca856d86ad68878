"""The pruning plan: static, per-layer structure that surgery rewrites.

Shapes under ``jit`` must be static, so the result of surgery (which rank
each factorized layer kept, which inputs an input-gated layer kept, ...)
cannot live in the params alone: it lives in a :class:`Plan`, a small
hashable value that a model's config carries and passes to every flaxprune
layer. A layer looks itself up by its module path (``'/'.join(self.path)``,
the same path as its node in the params tree) and, when it finds a spec,
builds the shapes the spec describes instead of its defaults.

``shrink(params, config) -> (params, config)`` returns a new plan next to the
new params, so ``Model(new_config).apply`` builds the smaller model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from flaxprune.gates import DEFAULT_GATE, GateConfig

__all__ = ["Plan", "path_key", "plan_of"]


def path_key(path: Sequence[str] | str) -> str:
    """The plan key of a module path: names joined by ``'/'``."""
    return path if isinstance(path, str) else "/".join(str(p) for p in path)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Gate hyperparameters plus per-layer structure overrides.

    Attributes:
      gate: hard-concrete hyperparameters shared by every gated layer.
      layers: ``((path, spec), ...)`` sorted by path; a spec is one of the
        layer spec dataclasses (``FactorizedSpec``, ``InputGatedSpec``,
        ``AdaptiveSpec``). A tuple keeps the plan hashable, so configs holding
        it can be static arguments of ``jax.jit``.
    """

    gate: GateConfig = DEFAULT_GATE
    layers: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if not isinstance(self.gate, GateConfig):
            raise ValueError(f"Plan: gate={self.gate!r} must be a flaxprune.GateConfig.")
        keys = [k for k, _ in self.layers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Plan: layers has duplicate paths: {sorted(k for k in keys if keys.count(k) > 1)}.")
        object.__setattr__(self, "layers", tuple(sorted((str(k), v) for k, v in self.layers)))

    def spec(self, path: Sequence[str] | str) -> Any | None:
        """The spec stored for ``path``, or None (use the layer's defaults)."""
        key = path_key(path)
        for k, v in self.layers:
            if k == key:
                return v
        return None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.layers)

    def with_specs(self, specs: Mapping[str, Any]) -> "Plan":
        """A new plan with ``specs`` added or replacing existing entries."""
        merged = self.as_dict()
        merged.update({path_key(k): v for k, v in specs.items()})
        return dataclasses.replace(self, layers=tuple(merged.items()))


def plan_of(config: Any) -> Plan | None:
    """The plan of a :class:`Plan` (itself) or of a model config, else None.

    A model config is a dataclass instance with a ``plan: Plan`` field. The
    one rule for "the config that built the params", shared by
    :func:`~flaxprune.shrink` and the size counts (:mod:`flaxprune.size`).
    """
    if isinstance(config, Plan):
        return config
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    plan = getattr(config, "plan", None)
    return plan if isinstance(plan, Plan) else None
