"""The run directory's files and the orbax reads and writes behind them, on small literal trees."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune.models import SRUConfig, SRULanguageModel
from flaxprune.training.checkpoint import (
    CheckpointStore,
    DamagedCheckpointError,
    check_output,
    is_reduced_model,
    load_reduced,
    read_latest,
    save_reduced,
)
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


# --- Damaged checkpoints: checksums, fallback, never deleted ------------------------------------------------


def _store_with_steps(directory, steps=(1, 2, 3)):
    store = CheckpointStore(directory, keep=5)
    for step in steps:
        store.save(step, {"w": np.full((64,), step, np.float32), "b": {"x": np.arange(4.0) * step}}, {"step": step})
    return store


def _flip_saved_array(step_dir):
    """Rewrites one saved value of ``w`` in place (same size), as a bit flip on disk would.

    orbax stores arrays in OCDBT chunks; rewriting through tensorstore keeps the files valid, so only the
    checksums can tell (a flip in a compressed chunk is caught earlier, as an unreadable file).
    """
    import shutil

    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(step_dir / "state")
        tree["w"] = np.asarray(tree["w"]).copy()
        tree["w"][7] += 1.0
        ckptr.save(step_dir / "state.new", tree)
    shutil.rmtree(step_dir / "state")
    (step_dir / "state.new").rename(step_dir / "state")


def test_checksums_catch_changed_values_and_the_store_falls_back(tmp_path):
    store = _store_with_steps(tmp_path / "c")
    target = {"w": jax.ShapeDtypeStruct((64,), np.float32), "b": {"x": jax.ShapeDtypeStruct((4,), np.float64)}}
    _flip_saved_array(tmp_path / "c" / "3")
    with pytest.raises(DamagedCheckpointError, match=r"step 3 .* is damaged: array\(s\) \['w'\] do not match"):
        store.restore(target, 3)
    logs = []
    state, meta = store.restore_intact(target, logs.append)
    assert meta["step"] == 2 and float(state["w"][0]) == 2.0
    assert any("step 3" in line and "is damaged" in line for line in logs)
    assert (tmp_path / "c" / "3.damaged").is_dir()  # kept, not deleted
    assert store.steps() == [2, 1]
    store.close()


@pytest.mark.parametrize("damage", ["truncate_meta", "garbage_meta", "no_state", "truncate_arrays"])
def test_unreadable_checkpoints_are_named_and_skipped(tmp_path, damage):
    store = _store_with_steps(tmp_path / "c")
    step3 = tmp_path / "c" / "3"
    if damage == "truncate_meta":
        (step3 / "meta" / "metadata").write_text('{"step": 3, "array_')
    elif damage == "garbage_meta":
        (step3 / "meta" / "metadata").write_bytes(b"\x00\xff garbage")
    elif damage == "no_state":
        import shutil

        shutil.rmtree(step3 / "state")
    else:
        for f in (step3 / "state").rglob("*"):
            if f.is_file() and f.stat().st_size > 100:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    target = {"w": jax.ShapeDtypeStruct((64,), np.float32), "b": {"x": jax.ShapeDtypeStruct((4,), np.float64)}}
    logs = []
    _, meta = store.restore_intact(target, logs.append)
    assert meta["step"] == 2
    assert len(logs) == 2 and "checkpoint step 3 in" in logs[0] and "is damaged" in logs[0]
    assert (tmp_path / "c" / "3.damaged").exists()
    store.close()
    # reading (eval, report, init_from) skips it too, and moves nothing
    _store_with_steps(tmp_path / "r").close()
    import shutil

    shutil.rmtree(tmp_path / "r" / "3" / "state")
    seen = []
    _, meta, step = read_latest(tmp_path / "r", log=seen.append)
    assert step == 2 and (tmp_path / "r" / "3").is_dir() and "step 3" in seen[0]


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
    store = _store_with_steps(tmp_path / "c", steps=(1, 2))
    for step in (1, 2):
        (tmp_path / "c" / str(step) / "meta" / "metadata").write_text("{")
    target = {"w": jax.ShapeDtypeStruct((64,), np.float32), "b": {"x": jax.ShapeDtypeStruct((4,), np.float64)}}
    with pytest.raises(DamagedCheckpointError, match=r"and so is every other checkpoint there .*step 1"):
        store.restore_intact(target, lambda _: None)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["1.damaged", "2.damaged"]
    store.close()


def test_a_full_disk_is_one_line_and_earlier_checkpoints_stay(tmp_path, monkeypatch):
    import errno

    store = _store_with_steps(tmp_path / "c", steps=(1,))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store._manager, "save", full)  # the test stands in for a full disk
    with pytest.raises(OSError, match=r"no space left on the device writing checkpoint step 2 to .* MiB are free"):
        store.save(2, {"w": np.ones(8)}, {})
    assert store.steps() == [1]
    store.close()


# --- Reduced models: never over what they did not write -----------------------------------------------------


def test_save_reduced_refuses_foreign_or_existing_output(tmp_path):
    params = {"dense": {"kernel": np.ones((2, 2), np.float32)}}
    config = fp.Plan()
    _store_with_steps(tmp_path / "checkpoints", steps=(250, 300)).close()
    with pytest.raises(FileExistsError, match="is not empty .* and is not a flaxprune reduced model"):
        save_reduced(tmp_path / "checkpoints", params, config, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["250", "300"]  # nothing deleted
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        check_output(tmp_path / "file")
    check_output(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")
    save_reduced(tmp_path / "out", params, config)
    assert is_reduced_model(tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds a reduced model: nothing was written. Pass --overwrite"):
        save_reduced(tmp_path / "out", params, config)
    save_reduced(tmp_path / "out", {"dense": {"kernel": np.zeros((2, 2), np.float32)}}, config, overwrite=True)
    state, _, _ = read_latest(tmp_path / "out")
    assert float(state["dense"]["kernel"][0, 0]) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out"]  # no leftovers


def test_a_changed_value_in_the_json_meta_is_caught(tmp_path):
    store = _store_with_steps(tmp_path / "c")
    meta_file = tmp_path / "c" / "3" / "meta" / "metadata"
    meta_file.write_text(meta_file.read_text().replace('"step": 3', '"step": 4'))  # valid JSON, wrong value
    with pytest.raises(DamagedCheckpointError, match="step 3 .* its JSON metadata does not match its saved checksum"):
        store.read_meta(3)
    target = {"w": jax.ShapeDtypeStruct((64,), np.float32), "b": {"x": jax.ShapeDtypeStruct((4,), np.float64)}}
    _, meta = store.restore_intact(target, lambda _: None)
    assert meta["step"] == 2
    store.close()


def test_an_interrupted_reduced_write_is_replaced_only_when_overwriting(tmp_path):
    (tmp_path / "out" / "0.orbax-checkpoint-tmp-123").mkdir(parents=True)  # a save killed midway
    with pytest.raises(FileExistsError, match="is not a flaxprune reduced model"):
        check_output(tmp_path / "out")
    save_reduced(tmp_path / "out", {"dense": {"kernel": np.ones((2, 2), np.float32)}}, fp.Plan(), overwrite=True)
    assert is_reduced_model(tmp_path / "out") and not (tmp_path / "out" / "0.orbax-checkpoint-tmp-123").exists()
