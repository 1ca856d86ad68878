"""Validation of an experiment config (an ``ml_collections.ConfigDict``) before any work starts."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import pathlib
from typing import Any

import ml_collections
import numpy as np
import optax

from flaxprune.gates import GateConfig
from flaxprune.lagrangian import noam_schedule
from flaxprune.methods import AGP_METHODS, METHODS
from flaxprune.plan import Plan
from flaxprune.size import BASES
from flaxprune.sparsity_control import SparsityController
from flaxprune.training.distill import check_distill
from flaxprune.training.prune_method import uses_lagrangian

__all__ = [
    "SCHEDULES",
    "batch_sizes",
    "compaction_settings",
    "learning_rate_schedule",
    "load_config_file",
    "method_fields",
    "multiplier_control",
    "plan_from_config",
    "prune_constraint",
    "sparsity_basis",
    "validate",
    "with_resolved_defaults",
]

SCHEDULES = ("constant", "noam", "linear_warmup", "cosine", "linear")
MULTIPLIER_UPDATES = ("pi", "adam")  # flaxprune.sparsity_controller (the default), FLOP's Adam ascent
SECTIONS = ("model", "data", "train", "optim", "prune")
GATE_INITS = ("constant", "spectral")  # every log_alpha from prune.gate.drop_rate, or from the SVD spectrum
# The sparsity the multipliers hold to the target: what surgery delivers (flaxprune.straight_through_sparsity,
# the default), or FLOP's expected L0 sparsity (a faithful reproduction, with optim.multiplier_update='adam').
CONSTRAINTS = ("hard", "expected")


def _positive_int(section: str, name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"config.{section}.{name}={value!r} must be an integer >= {minimum}.")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and (
        bool(np.isfinite(value))
    )


def _finite_number(section: str, name: str, value: Any, low: float, *, strict: bool, note: str = "") -> None:
    """Refuses anything but a finite number > ``low`` (``strict``) or >= ``low``: inf, nan, a bool, a string."""
    if not (_is_finite_number(value) and (value > low if strict else value >= low)):
        raise ValueError(
            f"config.{section}.{name}={value!r} must be a finite number {'>' if strict else '>='} {low}{note}."
        )


def _fraction(section: str, name: str, value: Any, what: str) -> None:
    """Refuses anything but a finite number in [0, 1)."""
    if not (_is_finite_number(value) and 0 <= value < 1):
        raise ValueError(f"config.{section}.{name}={value!r} must be in [0, 1) ({what}).")


def _check_gate(gate: Any) -> None:
    """``config.prune.gate``: GateConfig's fields, every number finite, checked by GateConfig itself."""
    fields = dict(gate)
    for name, value in fields.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not np.isfinite(value):
            raise ValueError(f"config.prune.gate.{name}={value!r} must be a finite number.")
    try:
        GateConfig(**fields)
    except TypeError as e:
        accepted = [f.name for f in dataclasses.fields(GateConfig)]
        unknown = sorted(set(fields) - set(accepted))
        raise ValueError(f"config.prune.gate has unknown field(s) {unknown}; GateConfig's fields: {accepted}.") from e
    except ValueError as e:
        raise ValueError(f"config.prune.gate: {e}") from e


def validate(config: Any) -> None:
    """Raises a ValueError naming the first bad field; touches no file and no device."""
    missing = [s for s in SECTIONS if s not in config]
    if missing:
        raise ValueError(f"config is missing section(s) {missing}; a config needs {list(SECTIONS)}.")
    t, o, p = config.train, config.optim, config.prune
    for name in ("batch_size", "seq_len", "steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        _positive_int("train", name, t[name])
    _positive_int("train", "eval_batch_size", t.eval_batch_size)
    if "speed_batch_size" in t:
        _positive_int("train", "speed_batch_size", t.speed_batch_size)
    _positive_int("train", "num_devices", t.num_devices, minimum=0)
    if o.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule={o.schedule!r} is not a schedule; accepted: {list(SCHEDULES)}.")
    for name in ("learning_rate", "gate_learning_rate"):
        _finite_number("optim", name, o[name], 0, strict=True)
    if "lambda_learning_rate" in o:  # used by 'adam' only, which multiplier_control requires it for
        _finite_number("optim", "lambda_learning_rate", o.lambda_learning_rate, 0, strict=True)
    multiplier_control(o)
    _positive_int("optim", "warmup_steps", o.warmup_steps, minimum=0)
    if "clip_norm" in o:
        _finite_number("optim", "clip_norm", o.clip_norm, 0, strict=False, note=" (0 disables clipping)")
    if "weight_decay" in o:
        _finite_number("optim", "weight_decay", o.weight_decay, 0, strict=False)
    for name in ("dropout", "attention_dropout", "dropatt"):
        if name in config.model:
            _fraction("model", name, config.model[name], "the probability of dropping a unit")
    _fraction("prune", "target", p.target, "the target sparsity")
    _positive_int("prune", "target_warmup", p.target_warmup, minimum=0)
    if sparsity_basis(config) not in BASES:
        raise ValueError(f"config.prune.basis={p.basis!r} is not a sparsity basis; accepted: {list(BASES)}.")
    if prune_constraint(config) not in CONSTRAINTS:
        raise ValueError(
            f"config.prune.constraint={p.constraint!r} is not a constrained sparsity; accepted: {list(CONSTRAINTS)} "
            "('hard': what surgery delivers; 'expected': FLOP's expected L0 sparsity)."
        )
    gate_init = p.get("gate_init", "constant")
    if gate_init not in GATE_INITS:
        raise ValueError(f"config.prune.gate_init={gate_init!r} is not a gate start; accepted: {list(GATE_INITS)}.")
    if gate_init == "spectral":
        r = p.get("gate_range")
        if r is None or len(r) != 2 or not all(np.isfinite(v) for v in r) or not r[0] <= r[1]:
            raise ValueError(
                f"config.prune.gate_range={r!r} must be (low, high) finite with low <= high: the log_alpha of a "
                "zero and of the largest singular component (e.g. (2.5, 8.0))."
            )
    _finite_number("prune", "best_tolerance", p.best_tolerance, 0, strict=False)
    every, threshold = compaction_settings(config)
    _positive_int("prune", "compact_every", every, minimum=0)
    ok = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and np.isfinite(threshold)
    if not ok or not 0 < threshold < 1:
        raise ValueError(
            f"config.prune.compact_threshold={threshold!r} must be a number in (0, 1): compaction drops the "
            "components whose P(z != 0) is below it (e.g. 1e-3)."
        )
    if p.enabled and "gate" in p:
        _check_gate(p.gate)
    _check_method(config)
    check_distill(config)  # config.distill (GLUE runs)


METHOD_MODELS = ("sru",)  # the models whose pruned matrices every method can build (flaxprune.methods)


def _check_method(config: Any) -> None:
    """``config.prune.method`` and its settings: a known method, on a model that builds it, a sound schedule."""
    p = config.prune
    method = p.get("method", "flop")
    if method not in METHODS:
        raise ValueError(f"config.prune.method={method!r} is not a pruning method; accepted: {list(METHODS)}.")
    model = config.model.get("name")
    if method != "flop" and model not in METHOD_MODELS:
        raise ValueError(
            f"config.prune.method={method!r} needs a model whose pruned matrices it can build ({list(METHOD_MODELS)}"
            f"); model.name={model!r} is pruned by 'flop' only."
        )
    block = p.get("block", (16, 16))
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"config.prune.block={block!r} must be two integers >= 1 (rows, columns), e.g. (16, 16).")
    _positive_int("prune", "agp_start", p.get("agp_start", 0), minimum=0)
    _positive_int("prune", "agp_frequency", p.get("agp_frequency", 100))
    _finite_number("prune", "agp_l1", p.get("agp_l1", 0.0), 0, strict=False)
    if method in AGP_METHODS and p.target_warmup < p.get("agp_start", 0):
        raise ValueError(
            f"config.prune.target_warmup={p.target_warmup} (where AGP's schedule ends) is before "
            f"config.prune.agp_start={p.get('agp_start', 0)} (where it starts); the end must not precede the start."
        )
    if method != "flop" and compaction_settings(config)[0]:
        raise ValueError(
            f"config.prune.compact_every={compaction_settings(config)[0]} compacts FLOP's factorized and input-gated "
            f"layers only; set it to 0 for config.prune.method={method!r}."
        )


def multiplier_control(optim: Any) -> tuple[str, Any]:
    """How the multipliers are updated: ``('pi', SparsityController)`` or ``('adam', lambda_learning_rate)``.

    ``config.optim.multiplier_update`` (default ``'pi'``) picks the update; ``config.optim.multiplier``
    holds fields of :class:`flaxprune.SparsityController` (unset ones keep its defaults).

    Raises:
      ValueError: naming the field, for an unknown update, an unknown controller field or a bad value.
    """
    update = optim.get("multiplier_update", "pi")
    if update not in MULTIPLIER_UPDATES:
        raise ValueError(
            f"config.optim.multiplier_update={update!r} is not a multiplier update; accepted: "
            f"{list(MULTIPLIER_UPDATES)} ('pi': PI control, no per-task rate; 'adam': FLOP's ascent at "
            "optim.lambda_learning_rate)."
        )
    if update == "adam":
        if "lambda_learning_rate" not in optim:
            raise ValueError("config.optim.multiplier_update='adam' needs config.optim.lambda_learning_rate (> 0).")
        return update, optim.lambda_learning_rate
    fields = dict(optim.get("multiplier", {}))
    accepted = [f.name for f in dataclasses.fields(SparsityController)]
    unknown = sorted(set(fields) - set(accepted))
    if unknown:
        raise ValueError(f"config.optim.multiplier has unknown field(s) {unknown}; SparsityController's: {accepted}.")
    try:
        return update, SparsityController(**fields)
    except ValueError as e:
        raise ValueError(f"config.optim.multiplier: {e}") from None


def with_resolved_defaults(config: Any) -> Any:
    """A copy of ``config`` with the defaults of :class:`flaxprune.SparsityController` it relies on written out.

    A pruned run under PI control takes every controller field that
    ``config.optim.multiplier`` leaves unset from the library; written into
    the run's ``config.json`` they say what ran, so a run made under other
    defaults (an older flaxprune) is not taken for one of this config
    (:func:`flaxprune.training.finished_summary`), and a resume under
    changed defaults is refused like any other config change. Other configs
    are returned as they are.
    """
    if not uses_lagrangian(config):
        return config
    update, control = multiplier_control(config.optim)
    if update != "pi":
        return config
    resolved = copy.deepcopy(config)
    with resolved.unlocked():
        resolved.optim.multiplier = ml_collections.ConfigDict(dataclasses.asdict(control))
    return resolved


def method_fields(config: Any) -> dict[str, Any]:
    """The model fields ``config.prune.method`` sets (``method``, ``block``), for a model that takes them."""
    if config.model.get("name") not in METHOD_MODELS:
        return {}
    p = config.prune
    return {"method": p.get("method", "flop"), "block": tuple(p.get("block", (16, 16)))}


def plan_from_config(config: Any) -> Plan:
    """The model's plan; an unpruned run has no gates, so its gate settings are the defaults."""
    use = config.prune.enabled and "gate" in config.prune
    return Plan(gate=GateConfig(**dict(config.prune.gate)) if use else GateConfig())


def batch_sizes(train: Any) -> dict[str, int]:
    """The global batch sizes a task takes from ``config.train``: training, evaluation, inference timing."""
    return {
        "batch_size": train.batch_size,
        "eval_batch_size": train.eval_batch_size,
        "speed_batch_size": train.get("speed_batch_size", train.eval_batch_size),
    }


def compaction_settings(config: Any) -> tuple[int, float]:
    """``(prune.compact_every, prune.compact_threshold)``: every how many steps (0: never) to drop the
    components whose ``P(z != 0)`` is below the threshold (:mod:`flaxprune.compaction`)."""
    p = config.prune
    return p.get("compact_every", 0), p.get("compact_threshold", 1e-3)


def sparsity_basis(config: Any) -> str:
    """``config.prune.basis`` (:mod:`flaxprune.size`): ``'factors'`` (the default) or ``'dense'``."""
    return str(config.prune.get("basis", "factors"))


def prune_constraint(config: Any) -> str:
    """``config.prune.constraint``: the sparsity the multipliers hold to the target, ``'hard'`` (the default:
    what surgery delivers, :func:`flaxprune.straight_through_sparsity`) or ``'expected'`` (FLOP's)."""
    return str(config.prune.get("constraint", "hard"))


def learning_rate_schedule(optim: Any, total_steps: int) -> optax.Schedule:
    """The weights' learning-rate schedule named by ``config.optim.schedule``.

    ``cosine`` warms up linearly, then decays to 0 at ``total_steps``
    (Transformer-XL's schedule); ``linear`` warms up, then decays linearly to
    0 (BERT fine-tuning); ``noam`` is FLOP's inverse square root;
    ``linear_warmup`` warms up and stays.
    """
    if optim.schedule == "constant":
        return optax.constant_schedule(optim.learning_rate)
    if optim.schedule == "noam":
        return noam_schedule(optim.learning_rate, max(1, optim.warmup_steps))
    if optim.schedule == "cosine":
        warmup = min(optim.warmup_steps, total_steps - 1)
        return optax.warmup_cosine_decay_schedule(0.0, optim.learning_rate, max(1, warmup), total_steps)
    if optim.schedule == "linear":
        warmup = max(1, min(optim.warmup_steps, total_steps - 1))
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, optim.learning_rate, warmup),
                optax.linear_schedule(optim.learning_rate, 0.0, max(1, total_steps - warmup)),
            ],
            [warmup],
        )
    return optax.linear_schedule(0.0, optim.learning_rate, max(1, optim.warmup_steps))


def load_config_file(path: str | pathlib.Path) -> Any:
    """``get_config()`` of an experiment config file (how variants build on a base config)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_config_file: no config file at {path}.")
    spec = importlib.util.spec_from_file_location(f"flaxprune_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
