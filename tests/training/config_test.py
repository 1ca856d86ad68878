"""``config.validate``: every number finite and in its range, named with its value, before any work starts."""

import math
import pathlib

import pytest
from tiny_runs import CONFIGS, tiny_lm_config

from flaxprune.training.config import load_config_file, validate

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("path", sorted(pathlib.Path(CONFIGS).glob("*.py")), ids=lambda p: p.stem)
def test_every_experiment_config_validates(path):
    validate(load_config_file(path))


@pytest.mark.parametrize(
    "key,value,match",
    [
        *[
            (f"optim.{name}", value, rf"config.optim.{name}={value!r} must be a finite number > 0\.")
            for name in ("learning_rate", "gate_learning_rate", "lambda_learning_rate")
            for value in (INF, NAN, -INF, 0.0, -1e-3)
        ],
        *[
            ("optim.clip_norm", value, rf"config.optim.clip_norm={value!r} must be a finite number >= 0 \(0 disables")
            for value in (INF, NAN, -1.0)
        ],
        *[
            ("optim.weight_decay", value, rf"config.optim.weight_decay={value!r} must be a finite number >= 0\.")
            for value in (INF, NAN, -0.01)
        ],
        *[
            ("prune.best_tolerance", value, rf"config.prune.best_tolerance={value!r} must be a finite number >= 0\.")
            for value in (INF, NAN, -0.01)
        ],
        *[
            ("prune.target", value, rf"config.prune.target={value!r} must be in \[0, 1\) \(the target sparsity\)")
            for value in (INF, NAN, 1.0, -0.1)
        ],
        *[
            ("model.dropout", value, rf"config.model.dropout={value!r} must be in \[0, 1\) \(the probability")
            for value in (INF, NAN, 1.0, -0.1)
        ],
    ],
)
def test_a_non_finite_or_out_of_range_number_is_refused(key, value, match):
    config = tiny_lm_config(**{key: value})
    with pytest.raises(ValueError, match=match):
        validate(config)


@pytest.mark.parametrize("key,value", [("optim.clip_norm", 0.0), ("optim.weight_decay", 0.0), ("model.dropout", 0.0)])
def test_zero_is_accepted_where_it_means_off(key, value):
    validate(tiny_lm_config(**{key: value}))


def test_bert_attention_dropout_is_checked():
    config = load_config_file(CONFIGS / "bert_glue.py")
    config.model.attention_dropout = 1.0
    with pytest.raises(ValueError, match=r"config.model.attention_dropout=1.0 must be in \[0, 1\)"):
        validate(config)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("beta", INF, r"config.prune.gate.beta=inf must be a finite number\."),
        ("limit_r", INF, r"config.prune.gate.limit_r=inf must be a finite number\."),
        ("limit_l", -INF, r"config.prune.gate.limit_l=-inf must be a finite number\."),
        ("init_std", NAN, r"config.prune.gate.init_std=nan must be a finite number\."),
        ("drop_rate", 0.0, r"config.prune.gate: GateConfig: drop_rate=0.0 must be in the open interval \(0, 1\)"),
        ("betta", 1.0, r"config.prune.gate has unknown field\(s\) \['betta'\]; GateConfig's fields: \['beta'"),
    ],
)
def test_gate_fields_are_finite_and_checked_up_front(field, value, match):
    config = load_config_file(CONFIGS / "bert_glue.py")
    config.prune.gate[field] = value
    with pytest.raises(ValueError, match=match):
        validate(config)


def test_resolved_defaults_write_out_every_controller_field():
    import dataclasses
    import json

    from flaxprune import SparsityController
    from flaxprune.training.config import with_resolved_defaults

    c = tiny_lm_config()
    c.optim.multiplier = {"derivative_gain": 1000.0}
    before = c.to_json_best_effort()
    resolved = with_resolved_defaults(c)
    want = dataclasses.asdict(SparsityController(derivative_gain=1000.0))
    assert resolved.optim.multiplier.to_dict() == want and want["integral_gain"] == SparsityController().integral_gain
    assert c.to_json_best_effort() == before  # the argument is not changed
    assert {k: v for k, v in json.loads(resolved.to_json_best_effort()).items() if k != "optim"} == {
        k: v for k, v in json.loads(before).items() if k != "optim"
    }
    assert with_resolved_defaults(resolved).to_json_best_effort() == resolved.to_json_best_effort()  # idempotent
    dense = tiny_lm_config(**{"prune.enabled": False})
    assert with_resolved_defaults(dense) is dense  # no multipliers: nothing to resolve
    adam = tiny_lm_config(**{"optim.multiplier_update": "adam", "optim.lambda_learning_rate": 0.01})
    assert with_resolved_defaults(adam) is adam  # FLOP's ascent: its rate is in the config already


def test_a_finished_run_under_other_controller_defaults_is_not_reused(tmp_path):
    import json

    from flaxprune.training import finished_summary
    from flaxprune.training.config import with_resolved_defaults

    c = tiny_lm_config()
    summary = {"status": "done", "step": c.train.steps}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "config.json").write_text(with_resolved_defaults(c).to_json_best_effort())  # as a run writes it
    assert finished_summary(c, tmp_path) == summary
    (tmp_path / "config.json").write_text(c.to_json_best_effort())  # an older run: the controller unrecorded
    assert finished_summary(c, tmp_path) is None
    stored = json.loads(with_resolved_defaults(c).to_json_best_effort())
    stored["optim"]["multiplier"]["integral_gain"] *= 2  # made under another default
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert finished_summary(c, tmp_path) is None
