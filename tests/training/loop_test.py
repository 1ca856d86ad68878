"""The training loop end to end on tiny runs: resume, preemption, failures, shrink."""

import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxprune.training import loop, runs

from tiny_runs import tiny_lm_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("full")
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    summary = loop.train(cfg, workdir, log=lambda _: None, progress=False)
    return cfg, workdir, summary


@pytest.mark.e2e
def test_run_finishes_and_reduced_model_matches(finished):
    _, workdir, summary = finished
    assert summary["status"] == "done" and summary["step"] == 12
    assert summary["reduced_params"] < summary["params"]
    assert summary["reduced_valid_bpc"] == pytest.approx(summary["valid_bpc"], abs=1e-4)
    assert summary["reduced_test_bpc"] == pytest.approx(summary["test_bpc"], abs=1e-4)
    for name in ("metrics.jsonl", "config.json", "summary.json"):
        assert (workdir / name).is_file()
    for name in ("plot_training.png", "plot_sparsity.png", "plot_ranks.png"):  # every run draws its own at the end
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = {line.split('"kind": "')[1].split('"')[0] for line in (workdir / "metrics.jsonl").read_text().splitlines()}
    assert kinds == {"train", "eval"}
    reloaded = runs.evaluate_run(workdir, "test", reduced=True)
    assert reloaded["test_bpc"] == pytest.approx(summary["reduced_test_bpc"], abs=1e-4)


@pytest.mark.e2e
def test_sigterm_saves_and_resume_is_exact(finished, tmp_path, data_dir):
    cfg, full_dir, _ = finished

    def preempt(step):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    first = loop.train(cfg, tmp_path, on_step=preempt, log=lambda _: None, progress=False)
    assert first == {"status": "preempted", "step": 6}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "6"]
    second = loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    assert second["status"] == "done"
    _, resumed, _, step = runs.load_run(tmp_path)
    _, uninterrupted, _, full_step = runs.load_run(full_dir)
    assert step == full_step == 12
    chex.assert_trees_all_equal(resumed, uninterrupted)


@pytest.mark.e2e
def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path, monkeypatch, data_dir):
    original = loop.make_train_step

    def poisoned(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def step(state, batch):
            new, metrics = step_fn(state, batch)
            bad = new.step >= 6
            return new.replace(finite=new.finite & ~bad), {**metrics, "loss": jnp.where(bad, jnp.nan, metrics["loss"])}

        return step

    monkeypatch.setattr(loop, "make_train_step", poisoned)
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite at or before step 6.*step 4"):
        loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    _, params, _, step = runs.load_run(tmp_path)
    assert step == 4
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


@pytest.mark.e2e
def test_checkpoint_of_another_model_is_refused_before_anything_changes(finished, data_dir):
    cfg, workdir, _ = finished
    before = sorted(str(p) for p in workdir.rglob("*"))
    other = tiny_lm_config(**{"data.data_dir": data_dir, "model.d_model": 24})
    with pytest.raises(ValueError, match=r"different model config: d_model 16 -> 24\. Use a new --workdir"):
        loop.train(other, workdir, log=lambda _: None, progress=False)
    assert sorted(str(p) for p in workdir.rglob("*")) == before


@pytest.mark.parametrize(
    "override,match",
    [
        ({"prune.target": 1.0}, r"config.prune.target=1.0 must be in \[0, 1\)"),
        ({"train.seq_len": 0}, r"config.train.seq_len=0"),
        ({"optim.schedule": "rsqrt"}, r"config.optim.schedule='rsqrt'"),
        ({"model.name": "lstm"}, r"model.name='lstm' is not a model"),
        ({"prune.gate_init": "svd"}, r"gate_init='svd' is not a gate start; accepted: \['constant', 'spectral'\]"),
        ({"prune.gate_init": "spectral", "prune.gate_range": (8.0, 2.5)}, r"prune.gate_range=\(8.0, 2.5\) must be"),
        ({"prune.basis": "total"}, r"prune.basis='total' is not a sparsity basis; accepted: \['factors', 'dense'\]"),
    ],
)
def test_bad_config_fails_before_writing(tmp_path, data_dir, override, match):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir, **override})
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        loop.train(cfg, workdir, log=lambda _: None, progress=False)
    assert not workdir.exists()


def test_unknown_model_field_and_missing_data(tmp_path, data_dir):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    cfg.model.n_heads = 4
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_heads'\]"):
        loop.prepare(cfg, tmp_path / "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = tiny_lm_config(**{"data.data_dir": data_dir, "data.name": "enwik8"})
    cfg.data.max_bytes = None
    cfg.data.manual_dir = str(empty)
    with pytest.raises(FileNotFoundError, match=str(empty)):
        loop.prepare(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_init_from_an_earlier_run_copies_weights_and_keeps_fresh_gates(finished):
    from flaxprune.training.init_from import load_initial_params
    from flaxprune.training.state import initial_state_fn

    cfg, workdir, _ = finished
    run = loop.prepare(cfg, workdir)
    fresh = jax.jit(initial_state_fn(run.task, run.tx, cfg.train.seed, cfg.train.batch_size))().params
    warm = load_initial_params(workdir, fresh)
    which = "best" if any(p.name.isdigit() for p in (workdir / "best").iterdir()) else "checkpoints"
    _, trained, _, _ = runs.load_run(workdir, which=which)  # init_from prefers the best checkpoint
    chex.assert_trees_all_equal(warm["layers_1"]["W"]["P"], trained["layers_1"]["W"]["P"])
    chex.assert_trees_all_equal(warm["output"], trained["output"])
    chex.assert_trees_all_equal(warm["layers_1"]["W"]["log_alpha"], fresh["layers_1"]["W"]["log_alpha"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_initial_params(workdir / "nope", fresh)


def test_spectral_gate_start_needs_a_warm_start(tmp_path, data_dir):
    cfg = tiny_lm_config(**{"data.data_dir": data_dir, "prune.gate_init": "spectral"})
    with pytest.raises(ValueError, match=r"gate_init='spectral' .* needs a warm start"):
        loop.train(cfg, tmp_path / "run", log=lambda _: None, progress=False)


def test_the_step_reports_the_hard_sparsity_of_its_updated_params(tmp_path, data_dir):
    """Traced with the step (no host work at log steps): the eval masks' sparsity of the params it returns."""
    from flaxprune.size import hard_sparsity
    from flaxprune.training.state import initial_state_fn

    cfg = tiny_lm_config(**{"data.data_dir": data_dir})
    run = loop.prepare(cfg, tmp_path / "run")
    state = jax.jit(initial_state_fn(run.task, run.tx, 0, cfg.train.batch_size))()
    step = jax.jit(loop.run_train_step(run))
    batches = run.task.train_batches(0, 1)
    for _ in range(2):
        state, metrics = step(state, next(batches))
        want = hard_sparsity(state.params, run.model_config.plan.gate, run.basis, reference=run.prunable)
        assert float(metrics["hard_sparsity"]) == pytest.approx(float(want), abs=1e-7)
    assert not (tmp_path / "run").exists()
