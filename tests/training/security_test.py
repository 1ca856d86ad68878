"""Loading a checkpoint never runs code: crafted model configs in real orbax checkpoints are refused.

The attack (issue 11): a checkpoint's meta names a flaxprune function
(``load_config_file``) with the path of a Python file as its argument; an
earlier loader called it, which executed the file under ``flaxprune report``
and on a ``train`` resume. Here the file would write a marker; the tests load
the crafted checkpoint every way the library does and check that each refuses
it with one clear error and that the marker never appears.
"""

import json

import jax
import jax.numpy as jnp
import pytest
from tiny_runs import tiny_lm_config

import flaxprune as fp
from flaxprune.models import SRUConfig, SRULanguageModel
from flaxprune.training import loop, runs
from flaxprune.training.checkpoint import (
    META_CHECKSUM_KEY,
    CheckpointStore,
    load_reduced,
    meta_checksum,
    save_reduced,
)
from flaxprune.training.run_dir import RunFiles


def _payload(tmp_path):
    marker = tmp_path / "pwned"
    script = tmp_path / "evil.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef get_config():\n    return {{}}\n")
    crafted = {"__class__": "flaxprune.training.config.load_config_file", "path": str(script)}
    return marker, json.dumps(crafted)


def _craft(directory, text):
    """Rewrites the model config in the newest checkpoint's JSON meta, as an attacker with the files would."""
    (step,) = [p for p in directory.iterdir() if p.name.isdigit()]
    meta_file = step / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["model_config"] = text
    meta[META_CHECKSUM_KEY] = meta_checksum(meta)  # a checksum is no signature: the attacker recomputes it
    meta_file.write_text(json.dumps(meta))


@pytest.fixture
def reduced_dir(tmp_path):
    config = SRUConfig(vocab_size=7, d_model=8, n_layers=1, rank=2, gated=True, plan=fp.Plan())
    model = SRULanguageModel(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32), model.initial_carry(1))["params"]
    small, small_config = fp.shrink(params, config)
    save_reduced(tmp_path / "reduced", small, small_config)
    return tmp_path / "reduced"


def test_a_crafted_reduced_model_is_refused_by_every_loader(reduced_dir, tmp_path):
    marker, text = _payload(tmp_path)
    _craft(reduced_dir, text)
    with pytest.raises(ValueError, match="'flaxprune.training.config.load_config_file' is not one that may be loaded"):
        load_reduced(reduced_dir)
    with pytest.raises(ValueError, match="is not one that may be loaded"):
        runs.report_checkpoint(reduced_dir)
    assert not marker.exists()


def test_a_crafted_training_checkpoint_is_refused_on_resume_and_by_report(tmp_path):
    marker, text = _payload(tmp_path)
    workdir = tmp_path / "run"
    store = CheckpointStore(RunFiles(workdir).checkpoints, 1)
    store.save(4, {"trainable": {"params": {"w": jnp.ones(2)}}}, {"model_config": "{}", "data": {}})
    store.close()
    _craft(RunFiles(workdir).checkpoints, text)
    with pytest.raises(ValueError, match="is not one that may be loaded"):
        runs.load_run(workdir)
    with pytest.raises(ValueError, match="holds a checkpoint of a different model config"):
        loop.prepare(tiny_lm_config(**{"data.data_dir": str(tmp_path / "tfds")}), workdir)
    assert not marker.exists()
