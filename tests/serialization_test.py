"""Configs with plans survive a JSON round trip."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.models import CONFIG_CLASSES
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
    classes = (_Cfg, fp.Plan, fp.GateConfig, fp.FactorizedSpec, fp.InputGatedSpec, fp.AdaptiveSpec)
    back = config_from_json(config_to_json(cfg), classes)
    assert back == dataclasses.replace(cfg, dtype=np.dtype(jnp.bfloat16))
    assert hash(back.plan) == hash(plan)


def test_refuses_classes_not_on_the_list():
    with pytest.raises(ValueError, match=r"class '.*_Cfg' is not one that may be loaded"):
        config_from_json(config_to_json(_Cfg()), CONFIG_CLASSES)


@pytest.mark.parametrize(
    "tree,match",
    [
        ({"__class__": "flaxprune.training.config.load_config_file", "path": "x.py"}, "is not one that may be loaded"),
        ({"__class__": "os.system", "command": "touch /tmp/pwned"}, "is not one that may be loaded"),
        ({"__class__": ["flaxprune.plan.Plan"]}, "is not one that may be loaded"),
        ({"__class__": "flaxprune.plan.Plan", "gate": {"__class__": "flaxprune.gates.GateConfig"}, "evil": 1},
         r"has no field\(s\) \['evil'\]"),
        ({"__class__": "flaxprune.plan.Plan", "gate": 3}, "the saved flaxprune.plan.Plan is not valid"),
        ({"__class__": "flaxprune.layers.factorized.FactorizedSpec", "rank": -2}, "is not valid"),
        ({"__dtype__": "not_a_dtype"}, "not a numpy dtype name"),
    ],
)
def test_crafted_configs_are_refused_and_run_nothing(tree, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        config_from_json(json.dumps(tree), CONFIG_CLASSES)
    with pytest.raises(ValueError, match="is not JSON"):
        config_from_json("{not json", CONFIG_CLASSES)


def test_every_model_config_round_trips_through_the_allow_list():
    from flaxprune.models import BertConfig, SRUConfig, TransformerXLConfig

    for cfg in (SRUConfig(vocab_size=7), TransformerXLConfig(vocab_size=7), BertConfig()):
        assert config_from_json(config_to_json(cfg), CONFIG_CLASSES) == cfg


def test_saved_config_without_a_newer_field_still_matches():
    # A checkpoint written before GateConfig.eval_mask existed resumes: the field takes its default.
    from flaxprune.training.workdir_checks import same_model_config

    cfg = fp.Plan(gate=fp.GateConfig(beta=2 / 3)).with_specs({"a": fp.FactorizedSpec(rank=3)})
    tree = json.loads(config_to_json(cfg))
    del tree["gate"]["eval_mask"]
    old = json.dumps(tree)
    assert same_model_config(old, cfg)
    assert not same_model_config(old, dataclasses.replace(cfg, gate=fp.GateConfig(beta=2 / 3, eval_mask="clip")))
    assert not same_model_config(old, fp.Plan())
    assert not same_model_config("{not json", cfg)
