"""Configs with plans survive a JSON round trip."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.serialization import config_from_json, config_to_json


@dataclasses.dataclass(frozen=True)
class _Cfg:
    width: int = 3
    dtype: object = jnp.bfloat16
    plan: fp.Plan = fp.Plan()


def test_round_trip_with_specs_and_dtypes():
    plan = fp.Plan(gate=fp.GateConfig(beta=2 / 3)).with_specs(
        {
            "a": fp.FactorizedSpec(rank=3, merged=True),
            "b/c": fp.InputGatedSpec(keep=(0, 4)),
            "emb": fp.AdaptiveSpec(dims=(5, 0)),
        }
    )
    cfg = _Cfg(plan=plan)
    back = config_from_json(config_to_json(cfg), allowed_prefixes=("flaxprune.", __name__))
    assert back == dataclasses.replace(cfg, dtype=np.dtype(jnp.bfloat16))
    assert hash(back.plan) == hash(plan)


def test_refuses_classes_outside_allowed_modules():
    with pytest.raises(ValueError, match="outside the allowed modules"):
        config_from_json(config_to_json(_Cfg()))


def test_saved_config_without_a_newer_field_still_matches():
    # A checkpoint written before GateConfig.eval_mask existed resumes: the field takes its default.
    import json

    from flaxprune.training.loop import same_model_config

    cfg = fp.Plan(gate=fp.GateConfig(beta=2 / 3)).with_specs({"a": fp.FactorizedSpec(rank=3)})
    tree = json.loads(config_to_json(cfg))
    del tree["gate"]["eval_mask"]
    old = json.dumps(tree)
    assert same_model_config(old, cfg)
    assert not same_model_config(old, dataclasses.replace(cfg, gate=fp.GateConfig(beta=2 / 3, eval_mask="clip")))
    assert not same_model_config(old, fp.Plan())
    assert not same_model_config("{not json", cfg)
