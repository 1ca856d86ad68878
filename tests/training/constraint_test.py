"""prune.constraint: the multipliers hold the hard sparsity (what surgery delivers) or FLOP's expected one."""

import jax
import pytest

import flaxprune as fp
from flaxprune.training import loop
from flaxprune.training.config import validate
from flaxprune.training.state import initial_state_fn

from tiny_runs import tiny_glue_config, write_tiny_glue


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


def _controller_state(opt_state):
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, fp.SparsityControllerState))
    (state,) = [x for x in leaves if isinstance(x, fp.SparsityControllerState)]
    return state


@pytest.mark.parametrize("constraint", ["hard", "expected"])
def test_the_controller_sees_the_held_sparsity_moving_from_expected_to_hard_along_the_ramp(glue, constraint, tmp_path):
    cfg = tiny_glue_config(*glue, **{"prune.constraint": constraint})  # BERT, SVD factors, the 'dense' basis
    run = loop.prepare(cfg, tmp_path / "run")
    state = jax.jit(initial_state_fn(run.task, run.tx, 0, cfg.train.batch_size))()
    params, gate = state.params, run.model_config.plan.gate
    shapes = jax.eval_shape(lambda: params)
    # Both ramps start at the open model's expected sparsity (below 0: full-rank factors hold more than dense).
    assert float(run.target_fn(0)) == pytest.approx(fp.open_sparsity(shapes, "dense"))
    assert fp.open_sparsity(shapes, "dense") < 0
    expected = float(fp.expected_sparsity(params, gate, "dense", reference=run.prunable))
    hard = float(fp.hard_sparsity(params, gate, "dense", reference=run.prunable))
    assert hard - expected > 0.1  # the merged projections: far apart on this basis
    step = jax.jit(loop.run_train_step(run))
    batch = next(run.task.train_batches(0, 1))
    warmup = cfg.prune.target_warmup
    for at, weight in ((0, 0.0), (1, 1 / warmup), (warmup, 1.0)):
        new, _ = step(state.replace(step=jax.numpy.asarray(at, state.step.dtype)), batch)
        held = expected + (weight if constraint == "hard" else 0.0) * (hard - expected)
        # error = t - s of the params the step started from; smoothed from 0 with weight 1 - smoothing = 0.5
        want = 0.5 * (float(run.target_fn(at)) - held)
        assert float(_controller_state(new.opt_state).smoothed_error) == pytest.approx(want, abs=1e-6), at


def test_an_unknown_constraint_is_one_line_naming_the_choices(glue):
    cfg = tiny_glue_config(*glue, **{"prune.constraint": "soft"})
    accepted = r"accepted: \[.hard., .expected.\]"
    with pytest.raises(ValueError, match=r"^config\.prune\.constraint=.soft. is not .*" + accepted):
        validate(cfg)
