"""The multipliers' update on a toy across loss scales: PI control (the default) vs FLOP's Adam ascent.

    python experiments/multiplier_toy.py [--steps=1500] [--warmup=500] [--lambda-lr=0.01]

The toy: ``y = x @ W``, ``W`` (128 x 128) with singular values ``exp(-k/24)``,
fitted by a gated full-rank ``fp.FactorizedDense`` (each component 1/128 of
the prunable weights), gates at Adam rate 0.1, the target ramped from 0 over
``--warmup`` steps. The task loss is scaled by 0.03, 1 and 300, which scales
the ``|lambda_1|`` the target needs by as much: one setting has to serve all.
Writes ``experiments/results/multiplier_toy.{md,json,png}``: final hard
sparsity, its error, the largest overshoot after the ramp, the largest
``|lambda_1|``, and the trajectories.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from results_files import command_line, write_results  # experiments/, this script's folder

import flaxprune as fp
from flaxprune.size import expected_sparsity, hard_sparsity

ROOT = pathlib.Path(__file__).resolve().parents[1]
N, BATCH = 128, 256
PLAN = fp.Plan()
SCALES = (0.03, 1.0, 300.0)
TARGETS = (0.3, 0.5, 0.9)


class Toy(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic):
        return fp.FactorizedDense(N, rank=N, use_bias=False, plan=PLAN, name="W")(x, deterministic)


def run(
    target: float,
    scale: float,
    lambda_lr: float | None,
    steps: int,
    warmup: int,
    control: fp.SparsityController | None = None,
) -> dict[str, np.ndarray]:
    """Trajectories of one toy run; ``lambda_lr`` None: the controller (``control``: its settings, None: the
    defaults), else Adam ascent at that rate."""
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (BATCH, N))
    u, _ = jnp.linalg.qr(jax.random.normal(keys[1], (N, N)))
    v, _ = jnp.linalg.qr(jax.random.normal(keys[2], (N, N)))
    y = x @ ((u * jnp.exp(-jnp.arange(N) / 24.0)) @ v.T)
    model = Toy()
    trainable = {"params": model.init(jax.random.key(1), x, True)["params"], "lagrangian": fp.init_multipliers()}
    tx = fp.flop_optimizer(1e-2, 1e-1, lambda_lr, multiplier_control=control)
    target_fn = fp.target_schedule(target, warmup)

    def loss_fn(tr, i):
        out = model.apply({"params": tr["params"]}, x, False, rngs={"gates": jax.random.fold_in(keys[3], i)})
        s = expected_sparsity(tr["params"], PLAN.gate)
        return scale * jnp.mean((out - y) ** 2) + fp.penalty(s, target_fn(i), tr["lagrangian"])

    def step(carry, i):
        tr, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss_fn)(tr, i), opt_state, tr)
        tr = optax.apply_updates(tr, updates)
        out = {
            "target": target_fn(i),
            "expected_sparsity": expected_sparsity(tr["params"], PLAN.gate),
            "hard_sparsity": hard_sparsity(tr["params"], PLAN.gate),
            "lambda_1": tr["lagrangian"]["lambda_1"],
        }
        return (tr, opt_state), out

    _, traj = jax.jit(lambda t, o: jax.lax.scan(step, (t, o), jnp.arange(steps)))(trainable, tx.init(trainable))
    return {"step": np.arange(1, steps + 1), **{k: np.asarray(v, float) for k, v in traj.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--lambda-lr", type=float, default=0.01, help="the Adam ascent's rate (FLOP's update)")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    if not (args.steps > args.warmup >= 1 and args.lambda_lr > 0):
        print(f"multiplier_toy.py: need --steps > --warmup >= 1 and --lambda-lr > 0; got {vars(args)}.",
              file=sys.stderr)
        return 2
    from sparsity_plots import plot_trajectories, trajectory_summary

    rows, trajectories = [], {}
    for update, rate in (("pi", None), ("adam", args.lambda_lr)):
        for scale in SCALES:
            for target in TARGETS:
                tr = run(target, scale, rate, args.steps, args.warmup)
                s = trajectory_summary(tr)
                peak = float(np.abs(tr["lambda_1"]).max())
                rows.append({"update": update, "loss_scale": scale, **s, "max_abs_lambda_1": peak})
                if target == 0.5 or scale == 300.0:
                    trajectories[f"{update}, loss x{scale:g}, t={target}"] = tr
                print(update, scale, target, f"hard {s['final_hard_sparsity']:.3f}", flush=True)
    command = command_line("multiplier_toy.py", argv)
    lines = [
        "# The multipliers' update on a factorized toy: PI control (default) vs FLOP's Adam ascent",
        "",
        f"Made by `{command}`. {args.steps} steps, the target ramped over {args.warmup}; Adam ascent at rate "
        f"{args.lambda_lr}; the PI controller at its defaults ({fp.SparsityController()}).",
        "",
        "| update | loss scale | target | final hard sparsity (error) | max overshoot after the ramp (hard) | "
        "max abs lambda_1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['update']} | {r['loss_scale']:g} | {r['target']:.1f} | {r['final_hard_sparsity']:.3f} "
            f"({r['final_hard_sparsity_error']:+.3f}) | {r['max_hard_sparsity_overshoot']:+.3f} | "
            f"{r['max_abs_lambda_1']:.3g} |"
        )
    lines += ["", "Trajectories: `multiplier_toy_pi.png`, `multiplier_toy_adam.png`."]
    write_results(args.results, "multiplier_toy", command, rows, lines)
    pi = {k: v for k, v in trajectories.items() if k.startswith("pi")}
    adam = {k: v for k, v in trajectories.items() if k.startswith("adam")}
    plot_trajectories(pathlib.Path(args.results) / "multiplier_toy_pi.png", pi, "PI control (default)")
    plot_trajectories(pathlib.Path(args.results) / "multiplier_toy_adam.png", adam, "Adam ascent (FLOP)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
