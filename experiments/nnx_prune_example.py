"""Prune an NNX model of your own with flaxprune, end to end.

    python experiments/nnx_prune_example.py [--target=0.5] [--steps=1000] [--warmup=400] [--hidden=256]
        [--batch=256] [--lr=1e-3] [--gate-lr=1e-2] [--seed=0] [--data=task.npz]

The model is plain Flax NNX (an MLP with a LayerNorm and dropout) with
flaxprune's NNX layers swapped in for ``nnx.Linear``: an ``InputGatedDense``
first (a gate per input feature) and two ``FactorizedDense`` (``W = P diag(z)
Q``, a gate per rank-1 component). It trains with FLOP's Lagrangian toward
``--target`` sparsity (``nnx.Optimizer`` over ``fpx.Trainable(model)`` with
``fpx.flop_optimizer``), reports the hard sparsity, shrinks to smaller dense
matrices (``fpx.shrink``), checks that the reduced model gives the gated
model's eval outputs, and times the jitted forward of both.

The task, without ``--data``: 64 Gaussian inputs, the class is
``argmax(x[:10] + x[10:20] ** 2)`` over 10 classes, so only 20 inputs matter
and the input gates should find them. With ``--data``: an ``.npz`` holding
``x: [n, features]`` floats and ``y: [n]`` integer labels in ``[0, classes)``;
a fifth of the rows is held out for the accuracy.

Expect (default flags, 2 CPU cores, about 40 s): hard sparsity 0.50, params
85,549 -> 43,108, all 20 inputs that matter kept (and a few others), test
accuracy about 0.82 for the gated and the reduced model alike, reduced ==
gated to 1e-5, and the reduced eval forward about 1.5x faster.
Bad flags print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import flaxprune as fp
from flaxprune import nnx as fpx

N_ROWS, N_FEATURES, N_CLASSES = 16384, 64, 10
TIMING_RUNS = 30


class MLP(nnx.Module):
    """The user's model: plain NNX, with flaxprune layers where ``nnx.Linear`` was."""

    def __init__(self, d_in: int, d_hidden: int, n_classes: int, *, rngs: nnx.Rngs):
        self.fc0 = fpx.InputGatedDense(d_in, d_hidden, rngs=rngs)  # was nnx.Linear(d_in, d_hidden)
        self.norm = nnx.LayerNorm(d_hidden, rngs=rngs)
        self.fc1 = fpx.FactorizedDense(d_hidden, d_hidden, rngs=rngs)  # was nnx.Linear(d_hidden, d_hidden)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.head = fpx.FactorizedDense(d_hidden, n_classes, rngs=rngs)  # was nnx.Linear(d_hidden, n_classes)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm(jax.nn.relu(self.fc0(x)))
        h = self.dropout(jax.nn.relu(self.fc1(h)))
        return self.head(h)


class FlagError(Exception):
    """A bad flag or data file: one line for the user, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage and exits; one line is enough
        raise FlagError(message)


def parse_flags(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="nnx_prune_example.py", description="Prune a small NNX model with flaxprune.")
    p.add_argument("--target", type=float, default=0.5, help="target sparsity in [0, 1)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (>= 1)")
    p.add_argument("--warmup", type=int, default=400, help="steps over which the target ramps up from 0 (>= 0)")
    p.add_argument("--hidden", type=int, default=256, help="hidden width (>= 1)")
    p.add_argument("--batch", type=int, default=256, help="rows per step (>= 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="weights' learning rate (> 0)")
    p.add_argument("--gate-lr", type=float, default=1e-2, help="gates' learning rate (> 0)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed")
    p.add_argument("--data", type=pathlib.Path, default=None, help=".npz with x: [n, features], y: [n] (optional)")
    p.add_argument("--log-every", type=int, default=200, help="steps between progress lines (>= 1)")
    flags = p.parse_args(argv)
    if not 0 <= flags.target < 1:
        raise FlagError(f"--target={flags.target} must be in [0, 1)")
    for name in ("steps", "hidden", "batch", "log_every"):
        if getattr(flags, name) < 1:
            raise FlagError(f"--{name.replace('_', '-')}={getattr(flags, name)} must be >= 1")
    if flags.warmup < 0:
        raise FlagError(f"--warmup={flags.warmup} must be >= 0")
    for name in ("lr", "gate_lr"):
        if not (np.isfinite(getattr(flags, name)) and getattr(flags, name) > 0):
            raise FlagError(f"--{name.replace('_', '-')}={getattr(flags, name)} must be a finite number > 0")
    return flags


# --- data ------------------------------------------------------------------------


def synthetic_task(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``x: [N, 64]`` Gaussian, ``y = argmax(x[:, :10] + x[:, 10:20] ** 2)``: 20 of 64 inputs matter."""
    x = np.random.default_rng(seed).standard_normal((N_ROWS, N_FEATURES)).astype(np.float32)
    return x, np.argmax(x[:, :10] + x[:, 10:20] ** 2, axis=-1).astype(np.int32)


def load_task(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an ``.npz``, validated.

    Raises:
      FlagError: naming the file and what is wrong with it.
    """
    try:
        with np.load(path) as data:
            if "x" not in data or "y" not in data:
                raise FlagError(f"--data={path} must hold arrays 'x' and 'y', found {sorted(data.files)}")
            x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"])
    except (OSError, ValueError) as e:
        raise FlagError(f"--data={path} is not a readable .npz file ({type(e).__name__})") from None
    if x.ndim != 2 or y.shape != x.shape[:1] or len(y) < 10:
        raise FlagError(f"--data={path}: x {x.shape} must be [n, features] and y {y.shape} [n], with n >= 10")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise FlagError(f"--data={path}: y must hold integer labels >= 0")
    return x, y.astype(np.int32)


# --- training, surgery, timing ------------------------------------------------


def task_loss(model: MLP, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def eval_forward(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """The model's jitted eval-mode forward (evaluation masks, no dropout) as a function of the inputs.

    Split once, so a call runs the compiled function alone (``nnx.jit`` would also walk the graph).
    """
    graphdef, state = nnx.split(nnx.view(model, deterministic=True))
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: forward(state, x)


def accuracy(forward: Callable[[jax.Array], jax.Array], x: jax.Array, y: np.ndarray) -> float:
    return float(jnp.mean(jnp.argmax(forward(x), -1) == y))


def train(model: MLP, flags: argparse.Namespace, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """FLOP's Lagrangian toward ``flags.target``: weights and gates descend, the multipliers follow."""
    trainable = fpx.Trainable(model)
    optimizer = nnx.Optimizer(trainable, fpx.flop_optimizer(flags.lr, flags.gate_lr), wrt=nnx.Param)
    step = fpx.make_train_step(task_loss, fp.target_schedule(flags.target, flags.warmup))
    rows = np.random.default_rng(flags.seed + 1)
    for i in range(1, flags.steps + 1):
        idx = rows.integers(0, len(x), flags.batch)
        metrics = step(trainable, optimizer, (jnp.asarray(x[idx]), jnp.asarray(y[idx])))
        if i % flags.log_every == 0 or i == flags.steps:
            m = {k: float(v) for k, v in metrics.items()}
            print(
                f"step {i:5d}  loss {m['task_loss']:.4f}  expected sparsity {m['expected_sparsity']:.3f}  "
                f"target {m['target']:.3f}  lambda_1 {m['lambda_1']:+.4f}"
            )
    return m


def forward_ms(forward: Callable[[jax.Array], jax.Array], x: jax.Array) -> float:
    """Median wall time of a jitted forward, in milliseconds."""
    forward(x).block_until_ready()  # compile
    times = []
    for _ in range(TIMING_RUNS):
        start = time.perf_counter()
        forward(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def run(flags: argparse.Namespace, x: np.ndarray, y: np.ndarray) -> int:
    start = time.perf_counter()
    n_test = len(x) // 5
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    n_classes = int(y.max()) + 1
    rngs = dict(params=flags.seed, gates=flags.seed + 1, dropout=flags.seed + 2)
    # Built under nnx.jit: one compile for the whole init instead of one per initializer and shape.
    model = nnx.jit(lambda: MLP(x.shape[1], flags.hidden, n_classes, rngs=nnx.Rngs(**rngs)))()
    print(f"task: {len(x_train)} train / {n_test} test rows, {x.shape[1]} features, {n_classes} classes")
    print(f"params before: {fpx.total_params(model):,} ({fpx.prunable_params(model):,} prunable); "
          f"target sparsity {flags.target}")

    train(model, flags, x_train, y_train)
    hard, expected = nnx.jit(lambda m: (fpx.hard_sparsity(m), fpx.expected_sparsity(m)))(model)
    x_test = jnp.asarray(x_test)
    gated = eval_forward(model)
    print(f"hard sparsity {float(hard):.3f} (expected {float(expected):.3f}); "
          f"test accuracy {accuracy(gated, x_test, y_test):.3f}")

    small = fpx.shrink(model)  # a new, smaller model; `model` is left as it was
    reduced = eval_forward(small)
    gap = float(jnp.max(jnp.abs(reduced(x_test) - gated(x_test))))
    kept = small.fc0.spec.keep
    print(f"params after: {fpx.total_params(model):,} -> {fpx.total_params(small):,}; "
          f"max |reduced - gated| = {gap:.2e}; inputs kept {len(kept)}/{x.shape[1]}"
          + (f", {sum(k < 20 for k in kept)} of them among the 20 that matter" if flags.data is None else ""))
    print(f"test accuracy of the reduced model {accuracy(reduced, x_test, y_test):.3f}")
    print(fp.format_report(fpx.report(small)))
    if not gap < 1e-4:
        print(f"error: the reduced model differs from the gated one by {gap:.2e}", file=sys.stderr)
        return 1

    gated_ms, reduced_ms = forward_ms(gated, x_test), forward_ms(reduced, x_test)
    print(f"jitted eval forward, batch {len(x_test)}: gated {gated_ms:.3f} ms, reduced {reduced_ms:.3f} ms "
          f"(x{gated_ms / reduced_ms:.2f})")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        flags = parse_flags(argv)
        x, y = synthetic_task(flags.seed) if flags.data is None else load_task(flags.data)
    except FlagError as e:  # a bad file is a bad flag: reported before any work
        print(f"nnx_prune_example.py: error: {e}", file=sys.stderr)
        return 2
    return run(flags, x, y)


if __name__ == "__main__":
    sys.exit(main())
