"""Every pruning method (``config.prune.method``) through the training loop: exact resume, AGP's masks, bad input.

Each run is the tiny SRU run (12 steps, checkpoints at 4, 8, 12) with the
method's layers; a run interrupted after step 7 and resumed from its step-4
checkpoint must end bitwise where the uninterrupted run ends.
"""

import chex
import jax
import numpy as np
import pytest
from tiny_runs import tiny_lm_config

from flaxprune.dense_reference import reference_sparsity
from flaxprune.methods import METHODS
from flaxprune.training import loop, runs
from flaxprune.training.checkpoint import read_latest
from flaxprune.training.config import validate
from flaxprune.training.run_dir import RunFiles

pytestmark = pytest.mark.e2e


class Crash(Exception):
    """Stands in for kill -9 between two steps."""


def method_config(method, data_dir, **overrides):
    c = tiny_lm_config(**{"data.data_dir": data_dir, "prune.method": method, "prune.block": (4, 4),
                          "prune.agp_frequency": 2, "prune.agp_start": 1, "model.rank": None, **overrides})
    c.model.embed_dim = c.model.d_model  # every W is 16 x 48: 4 x 4 blocks divide it
    return c


def _crash_at(step):
    def hook(done):
        if done == step:
            raise Crash(step)

    return hook


@pytest.mark.parametrize("method", [m for m in METHODS if m != "flop"])  # flop: tests/training/resume_test.py
def test_a_crashed_run_of_every_method_resumes_to_the_uninterrupted_result(method, tmp_path, data_dir):
    cfg = method_config(method, data_dir)
    quiet = dict(log=lambda _: None, progress=False)
    reference = loop.train(cfg, tmp_path / "reference", **quiet)
    with pytest.raises(Crash):
        loop.train(cfg, tmp_path / "resumed", on_step=_crash_at(7), **quiet)
    resumed = loop.train(cfg, tmp_path / "resumed", **quiet)
    state_ref, state_res = (read_latest(RunFiles(tmp_path / d).checkpoints)[0] for d in ("reference", "resumed"))
    chex.assert_trees_all_equal(state_res, state_ref)  # params, optimizer state (AGP's masks), key, carry
    for key in ("valid_bpc", "reduced_valid_bpc", "hard_sparsity", "reference_sparsity"):
        assert resumed[key] == reference[key], key
    assert resumed["method"] == method


@pytest.mark.parametrize("method", ["agp", "agp_structured"])
def test_agp_runs_reach_the_schedule_and_keep_masked_weights_and_moments_at_zero(method, tmp_path, data_dir):
    cfg = method_config(method, data_dir, **{"prune.target": 0.75})  # the cubic ramp ends at step 6 of 12
    summary = loop.train(cfg, tmp_path, log=lambda _: None, progress=False)
    assert summary["hard_sparsity"] == summary["reference_sparsity"]
    assert abs(summary["reference_sparsity"] - 0.75) < 0.01  # floor(0.75 n) of each matrix's n entries
    _, params, model_config, _ = runs.load_run(tmp_path)
    assert float(reference_sparsity(params, model_config, model_config.prunable_shapes)) == pytest.approx(
        summary["reference_sparsity"])
    state = read_latest(RunFiles(tmp_path).checkpoints)[0]
    leaf = "kernel" if method == "agp" else "diag"
    weights = [np.asarray(params[f"layers_{i}"]["W"][leaf]) for i in range(2)]
    # Adam's moments of the pruned weights: the param-shaped arrays of the optimizer state at that leaf.
    for i, w in enumerate(weights):
        layer_moments = [np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(state["opt_state"])
                         if any(getattr(k, "key", None) == f"layers_{i}" for k in path)
                         and any(getattr(k, "key", None) == leaf for k in path) and np.shape(x) == w.shape]
        assert layer_moments and all(np.all(m[w == 0] == 0) for m in layer_moments)
        assert (w == 0).sum() >= 0.74 * w.size


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"prune.method": "magnitude"}, "config.prune.method='magnitude' is not a pruning method; accepted: ['flop'"),
        ({"prune.method": "l0_block", "prune.block": (5, 5)}, "does not divide the kernel [16, 48]: in=16 is not"),
        ({"prune.target": 1.0}, "config.prune.target=1.0 must be in [0, 1)"),
        ({"prune.target": -0.1}, "config.prune.target=-0.1 must be in [0, 1)"),
        ({"prune.method": "agp", "prune.agp_start": 8, "prune.target_warmup": 6},
         "config.prune.target_warmup=6 (where AGP's schedule ends) is before config.prune.agp_start=8"),
        ({"prune.method": "l0", "prune.compact_every": 4}, "compacts FLOP's factorized and input-gated layers only"),
        ({"prune.block": (4, 0)}, "config.prune.block=(4, 0) must be two integers >= 1"),
        ({"prune.agp_frequency": 0}, "config.prune.agp_frequency=0 must be an integer >= 1"),
    ],
)
def test_bad_method_settings_are_one_line_before_anything_is_written(overrides, message, tmp_path, data_dir):
    cfg = method_config("flop", data_dir)
    for key, value in overrides.items():
        section, name = key.split(".")
        cfg[section][name] = value
    with pytest.raises(ValueError) as info:
        loop.prepare(cfg, tmp_path / "run")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_method_other_than_flop_is_refused_for_a_model_that_cannot_build_it():
    from flaxprune.training.config import load_config_file
    from tiny_runs import CONFIGS

    cfg = load_config_file(CONFIGS / "txl_small.py")
    cfg.prune.method = "l0"
    with pytest.raises(ValueError, match=r"config.prune.method='l0' needs a model .*model.name='txl' is pruned by"):
        validate(cfg)
