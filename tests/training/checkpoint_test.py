"""The run directory's files and the orbax reads and writes behind them, on small literal trees."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.models import SRUConfig, SRULanguageModel
from flaxprune.training.checkpoint import CheckpointStore, load_reduced, read_latest, save_reduced
from flaxprune.training.run_dir import RunFiles


def test_run_files_name_the_layout(tmp_path):
    files = RunFiles(tmp_path / "run")
    assert files.workdir == (tmp_path / "run").absolute()
    paths = (files.config, files.metrics, files.checkpoints, files.best, files.reduced, files.summary)
    assert [p.name for p in paths] == ["config.json", "metrics.jsonl", "checkpoints", "best", "reduced", "summary.json"]
    assert not files.workdir.exists()  # naming the paths creates nothing


def test_read_latest_returns_the_newest_step_as_saved(tmp_path):
    assert read_latest(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert read_latest(tmp_path / "empty") is None
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        store.save(step, {"w": np.full((2,), step, np.float32), "n": {"b": np.arange(3)}}, {"step_seen": step})
    store.close()
    state, meta, step = read_latest(tmp_path / "ckpt")
    assert step == 3 and meta == {"step_seen": 3}
    chex.assert_trees_all_equal(state, {"w": np.full((2,), 3, np.float32), "n": {"b": np.arange(3)}})
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2, 3]  # keep=2
    assert read_latest(tmp_path / "ckpt", with_meta=False)[1] == {}


def test_reduced_model_round_trip_without_the_training_config(tmp_path):
    config = SRUConfig(vocab_size=7, d_model=8, n_layers=1, rank=2, gated=True, plan=fp.Plan())
    model = SRULanguageModel(config)
    tokens = jnp.zeros((1, 3), jnp.int32)
    params = model.init(jax.random.key(0), tokens, model.initial_carry(1), deterministic=True)["params"]
    small, small_config = fp.shrink(params, config)
    save_reduced(tmp_path / "reduced", small, small_config)
    reloaded_model, reloaded, reloaded_config = load_reduced(tmp_path / "reduced")
    assert reloaded_config == small_config and isinstance(reloaded_model, SRULanguageModel)
    chex.assert_trees_all_equal(reloaded, jax.device_get(small))
    with pytest.raises(FileNotFoundError, match="no saved model under"):
        load_reduced(tmp_path / "nothing")
