"""Distillation: the losses by hand, today's loss untouched without a teacher, a pruned run distilling from a
finished dense run (its parts logged, its teacher recorded, a resume exact and refused with another teacher),
and every bad setting refused before anything is written."""

import dataclasses
import json
import math
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from flaxprune.models.bert import BertClassifier, BertConfig, BertEncoder
from flaxprune.training import loop, runs
from flaxprune.training.checkpoint import CheckpointStore
from flaxprune.training.config import validate
from flaxprune.training.distill import (
    TEACHER_KEY,
    Distillation,
    hidden_loss,
    kd_loss,
    load_teacher,
    params_fingerprint,
)
from flaxprune.training.glue_task import INPUT_KEYS
from flaxprune.training.run_dir import RunFiles
from flaxprune.training.state import initial_state_fn

from tiny_runs import HF_CONFIG, tiny_glue_config, tiny_lm_config, torch_tensors, write_folder, write_tiny_glue

# --- The losses against numbers computed by hand -------------------------------------------------

STUDENT = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0], [9.0, -9.0, 3.0]], np.float32)  # row 2: padding
TEACHER = np.array([[2.0, 0.0, 1.0], [0.5, 0.5, -0.5], [-7.0, 4.0, 0.0]], np.float32)
WEIGHT = np.array([1.0, 0.5, 0.0], np.float32)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kd_loss_is_t2_times_the_weighted_kl_of_the_softened_distributions():
    t = 2.0
    ls, lt = _log_softmax(STUDENT.astype(np.float64) / t), _log_softmax(TEACHER.astype(np.float64) / t)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)  # per example
    want = t**2 * (kl[0] * 1.0 + kl[1] * 0.5) / 1.5  # the padded row weighs nothing
    got = jax.jit(kd_loss, static_argnums=(2,))(STUDENT, TEACHER, t, WEIGHT)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(kd_loss(STUDENT, TEACHER, t), t**2 * kl.mean(), rtol=1e-6)  # no weights: the mean
    assert float(kd_loss(STUDENT, STUDENT, t, WEIGHT)) == pytest.approx(0.0, abs=1e-6)  # no gap, no loss


def test_kd_loss_for_regression_is_the_weighted_squared_error():
    s, t = np.array([[1.0], [2.0], [9.0]], np.float32), np.array([[0.5], [3.0], [0.0]], np.float32)
    w = np.array([1.0, 3.0, 0.0], np.float32)
    assert float(kd_loss(s, t, 2.0, w, regression=True)) == pytest.approx((0.25 * 1 + 1.0 * 3) / 4)
    assert float(kd_loss(s, t, 2.0, regression=True)) == pytest.approx((0.25 + 1.0 + 81.0) / 3)


def test_hidden_loss_averages_layers_over_real_tokens_and_weighted_examples():
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.int32)  # 2 real tokens, then 1
    weight = np.array([1.0, 2.0], np.float32)
    zeros = np.zeros((2, 3, 2), np.float32)
    layer0 = zeros.copy()
    layer0[0, 0], layer0[0, 1], layer0[1, 0] = [1.0, 3.0], [2.0, 2.0], [0.0, 2.0]  # per-token MSE 5, 4, 2
    layer0[0, 2], layer0[1, 1:] = 100.0, -50.0  # padding: never counted
    layer1 = zeros + 1.0  # MSE 1 on every token
    want0 = (5.0 * 1 + 4.0 * 1 + 2.0 * 2) / (1 + 1 + 2)
    got = hidden_loss([layer0, layer1], [zeros, zeros], mask, weight)
    assert float(got) == pytest.approx((want0 + 1.0) / 2)
    assert float(hidden_loss([layer0], [zeros], mask)) == pytest.approx((5.0 + 4.0 + 2.0) / 3)
    with pytest.raises(ValueError, match="the student has 1 layer outputs and the teacher 2"):
        hidden_loss([layer0], [zeros, zeros], mask)


def test_the_objective_weighs_task_kd_and_hidden_terms():
    states = [jnp.ones((3, 1, 2))], [jnp.zeros((3, 1, 2))]
    mask = np.ones((3, 1), np.int32)
    d = Distillation(teacher_model=None, alpha=0.25, temperature=1.0, hidden_weight=0.5)
    loss, parts = d.objective(jnp.float32(2.0), (STUDENT, states[0]), (TEACHER, states[1]), mask, WEIGHT)
    kd = kd_loss(STUDENT, TEACHER, 1.0, WEIGHT)
    assert float(loss) == pytest.approx(0.75 * 2.0 + 0.25 * float(kd) + 0.5 * 1.0)
    assert sorted(parts) == ["distill_loss", "hidden_loss", "task_loss"]
    _, parts = dataclasses.replace(d, hidden_weight=0.0).objective(2.0, (STUDENT, None), (TEACHER, None), mask)
    assert sorted(parts) == ["distill_loss", "task_loss"]  # no hidden term, no hidden states needed


def test_bert_returns_every_layers_output_on_request_with_the_same_params_and_outputs():
    cfg = BertConfig(vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16, max_position=8)
    ids = np.array([[2, 5, 7, 3], [2, 9, 3, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    model = BertClassifier(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
    with_states = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, return_hidden_states=True))["params"]
    assert jax.tree.map(lambda s: (s.shape, s.dtype), with_states) == jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)

    @jax.jit
    def outputs(p):
        logits, states = model.apply({"params": p}, ids, None, mask, return_hidden_states=True)
        last, _ = BertEncoder(cfg).apply({"params": p["bert"]}, ids, None, mask)
        return logits, states, model.apply({"params": p}, ids, None, mask), last

    logits, states, plain_logits, last = outputs(params)
    chex.assert_trees_all_equal(logits, plain_logits)
    assert len(states) == 2 and all(s.shape == (2, 4, 8) for s in states)
    chex.assert_trees_all_equal(states[-1], last)


# --- The config ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


@pytest.mark.parametrize(
    "field,value,accepted",
    [
        ("alpha", -0.1, r"in \[0, 1\]"),
        ("alpha", 1.5, r"in \[0, 1\]"),
        ("alpha", math.nan, r"in \[0, 1\]"),
        ("temperature", 0.0, "> 0"),
        ("temperature", -1.0, "> 0"),
        ("temperature", math.inf, "> 0"),
        ("hidden_weight", -0.5, ">= 0"),
    ],
)
def test_bad_values_are_refused_naming_the_field(setup, field, value, accepted):
    cfg = tiny_glue_config(*setup)
    cfg.distill[field] = value
    with pytest.raises(ValueError, match=rf"^config\.distill\.{field}={value!r} must be .*{accepted}"):
        validate(cfg)


def test_unknown_fields_a_non_string_teacher_and_a_non_glue_task_are_refused(setup):
    cfg = tiny_glue_config(*setup)
    cfg.distill.beta = 1.0
    with pytest.raises(ValueError, match=r"config\.distill has unknown field\(s\) \['beta'\]; accepted: \['teacher'"):
        validate(cfg)
    cfg = tiny_glue_config(*setup)
    cfg.distill = ml_collections.ConfigDict({"teacher": 3})
    with pytest.raises(ValueError, match=r"config\.distill\.teacher=3 must be a string"):
        validate(cfg)
    lm = tiny_lm_config()
    validate(lm)  # the language models have no distill section
    lm.distill = ml_collections.ConfigDict({"teacher": "/some/run"})
    with pytest.raises(ValueError, match=r"config\.distill\.teacher='/some/run': distillation is for BERT on GLUE"):
        validate(lm)


def test_without_a_teacher_the_step_and_the_loss_are_todays(setup, tmp_path):
    """``distill.teacher=''`` (or no distill section) builds exactly the step of a run that never heard of it."""
    cfg = tiny_glue_config(*setup)
    plain = tiny_glue_config(*setup)
    del plain["distill"]
    traced = []
    for c in (cfg, plain):
        run = loop.prepare(c, tmp_path / "run")
        assert run.teacher is None and run.task.distill is None
        state = jax.eval_shape(initial_state_fn(run.task, run.tx, 0, c.train.batch_size))
        batch = next(run.task.train_batches(0, 1))
        traced.append(str(jax.make_jaxpr(loop.run_train_step(run))(state, batch)))
    assert traced[0] == traced[1]
    assert not (tmp_path / "run").exists()

    task = run.task

    def todays_loss(params, batch, carry, rngs):  # GlueTask.loss as it was before distillation
        logits = task.model.apply({"params": params}, *(batch[k] for k in INPUT_KEYS), deterministic=False, rngs=rngs)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"accuracy": accuracy}, carry)

    rngs = {"dropout": jax.random.key(1), "gates": jax.random.key(2)}
    args = (state.params, batch, {}, rngs)
    assert str(jax.make_jaxpr(task.loss)(*args)) == str(jax.make_jaxpr(todays_loss)(*args))


# --- End to end: a pruned run distilling from a tiny finished dense run ----------------------------


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for this module's runs: the interrupted and resumed runs load the
    uninterrupted one's programs instead of compiling them again (cached code computes the same bits)."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def one_layer(setup):
    """``setup``'s files with a one-layer BERT: the runs below compile in half the time of two layers'."""
    root, folder = setup
    tensors = {k: v for k, v in torch_tensors().items() if ".layer.1." not in k}
    one = write_folder(root / "bert_one_layer", tensors, {**HF_CONFIG, "num_hidden_layers": 1})
    shutil.copy(folder / "vocab.txt", one / "vocab.txt")
    return root, one


@pytest.fixture(scope="module")
def teacher(one_layer, tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("teacher")
    cfg = tiny_glue_config(*one_layer, **{"prune.enabled": False})
    assert loop.train(cfg, workdir, log=lambda _: None, progress=False)["status"] == "done"
    return workdir


def _student(setup, teacher_dir, **overrides):
    cfg = tiny_glue_config(*setup, **overrides)
    cfg.distill.update(teacher=str(teacher_dir), alpha=0.5, hidden_weight=1.0)
    return cfg


@pytest.fixture(scope="module")
def distilled(one_layer, teacher, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("distilled")
    summary = loop.train(_student(one_layer, teacher), workdir, log=lambda _: None, progress=False)
    return workdir, summary


def _rows(workdir, kind):
    rows = [json.loads(line) for line in RunFiles(workdir).metrics.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows if r["kind"] == kind]


@pytest.mark.e2e
def test_a_distilling_run_logs_the_parts_and_records_its_teacher(distilled, teacher):
    workdir, summary = distilled
    assert summary["status"] == "done" and summary["reduced_params"] <= summary["params"]
    train = _rows(workdir, "train")
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        assert {"task_loss", "distill_loss", "hidden_loss"} <= set(r) and r["distill_loss"] > 0
        assert r["loss"] == pytest.approx(0.5 * r["task_loss"] + 0.5 * r["distill_loss"] + r["hidden_loss"])
    store = CheckpointStore(RunFiles(workdir).checkpoints)
    record = store.read_meta()[TEACHER_KEY]
    store.close()
    assert record["path"] == str(teacher.resolve())
    assert record["fingerprint"] == params_fingerprint(runs.load_run(teacher, "best")[1])


@pytest.mark.e2e
def test_interrupted_and_resumed_equals_uninterrupted_and_keeps_its_teacher(one_layer, teacher, distilled, tmp_path):
    twin = shutil.copytree(teacher, tmp_path / "teacher")  # the same teacher elsewhere: the same fingerprint
    cfg = _student(one_layer, twin)

    def crash(step):  # after the step-3 checkpoint: the rerun resumes from it
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, tmp_path / "cut", on_step=crash, log=lambda _: None, progress=False)

    # The teacher's directory now holds another finished run (trained on 20 of the 24 examples, with the same
    # compiled programs): refused, though the config is the same; so is a resume without a teacher.
    other = tiny_glue_config(*one_layer, **{"prune.enabled": False, "data.train_subset": 20})
    loop.train(other, tmp_path / "other", log=lambda _: None, progress=False)
    twin.rename(tmp_path / "kept")
    (tmp_path / "other").rename(twin)
    metrics = RunFiles(tmp_path / "cut").metrics.read_text()
    with pytest.raises(ValueError, match=r"holds a run distilled from teacher .* a resume must keep its teacher"):
        loop.train(cfg, tmp_path / "cut", log=lambda _: None, progress=False)
    plain = tiny_glue_config(*one_layer)
    with pytest.raises(ValueError, match=r"config.distill.teacher now gives no teacher: a resume must keep its"):
        loop.train(plain, tmp_path / "cut", allow_config_change=True, log=lambda _: None, progress=False)
    assert RunFiles(tmp_path / "cut").metrics.read_text() == metrics  # nothing written

    shutil.rmtree(twin)
    (tmp_path / "kept").rename(twin)
    logs = []
    loop.train(cfg, tmp_path / "cut", log=logs.append, progress=False)
    assert any("resumed from step 3" in line for line in logs)
    chex.assert_trees_all_equal(runs.load_run(tmp_path / "cut")[1], runs.load_run(distilled[0])[1])
    assert _rows(tmp_path / "cut", "train") == _rows(distilled[0], "train")
    assert _rows(tmp_path / "cut", "eval") == _rows(distilled[0], "eval")


@pytest.mark.e2e
def test_a_teacher_that_is_not_a_finished_run_of_the_same_task_is_refused_before_writing(one_layer, teacher, tmp_path):
    def refused(teacher_dir, why, workdir=tmp_path / "run"):
        pattern = rf"^config\.distill\.teacher='{re.escape(str(teacher_dir))}' {why}.*; accepted: ''"
        with pytest.raises(ValueError, match=pattern):
            loop.train(_student(one_layer, teacher_dir), workdir, log=lambda _: None, progress=False)
        assert not (tmp_path / "run").exists()

    refused(tmp_path / "absent", "is not a directory")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "is not a finished run")
    refused(tmp_path / "empty", "is this run's own directory", workdir=tmp_path / "empty")
    other = shutil.copytree(teacher, tmp_path / "other")
    config = json.loads(RunFiles(other).config.read_text())
    RunFiles(other).config.write_text(json.dumps({**config, "data": {**config["data"], "task": "mrpc"}}))
    refused(other, "is a run of GLUE task 'mrpc', not the student's 'sst2'")
    RunFiles(other).config.write_text(json.dumps(config))
    RunFiles(other).summary.write_text(json.dumps({"status": "preempted", "step": 3}))
    refused(other, "is not a finished run")

    cfg = _student(one_layer, teacher)
    run = loop.prepare(tiny_glue_config(*one_layer), tmp_path / "run")
    regression = dataclasses.replace(run.model_config, num_labels=1)
    with pytest.raises(ValueError, match=r"has num_labels=2, the student 1; accepted"):
        load_teacher(cfg, tmp_path / "run", regression, run.mesh)
    deeper = dataclasses.replace(run.model_config, num_layers=2)
    with pytest.raises(ValueError, match=r"has num_layers=1, the student 2"):
        load_teacher(cfg, tmp_path / "run", deeper, run.mesh)
    cfg.distill.hidden_weight = 0.0  # without the hidden term the layers need not match
    assert load_teacher(cfg, tmp_path / "run", deeper, run.mesh) is not None
