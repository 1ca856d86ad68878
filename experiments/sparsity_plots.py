"""Sparsity trajectories of pruning runs: target, expected and hard sparsity and the multiplier over steps.

    python experiments/sparsity_plots.py --out=experiments/results/enwik6_sparsity.png RUN_DIR [RUN_DIR ...]

Reads each run's ``metrics.jsonl`` (the ``train`` rows the loop writes every
``train.log_every`` steps); one column of two panels per run: sparsity
(target, expected, hard) on top, ``lambda_1`` below on a symmetric log scale.
Writes beside the PNG a ``.md`` table and a ``.json`` with, per run, the
final hard and expected sparsity, their distance to the target and the
largest overshoot after the ramp (:func:`trajectory_summary`).
Headless (matplotlib's Agg backend).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import numpy as np
from flaxprune.training.run_plots import read_metrics
from results_files import command_line, write_results  # experiments/, this script's folder

__all__ = ["plot_trajectories", "read_trajectory", "trajectory_summary"]

FIELDS = ("target", "expected_sparsity", "hard_sparsity", "lambda_1")


def read_trajectory(run_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """``{'step', 'target', 'expected_sparsity', 'hard_sparsity', 'lambda_1'}`` arrays from the train rows.

    Raises:
      FileNotFoundError: if the run has no ``metrics.jsonl``.
      ValueError: if it holds no train row with a target (an unpruned run).
    """
    train = read_metrics(run_dir).get("train", {})
    if "target" not in train:
        raise ValueError(f"read_trajectory: {run_dir}/metrics.jsonl holds no train row with a target sparsity.")
    keep = np.isfinite(train["target"])
    nan = np.full(train["step"].shape, np.nan)
    return {"step": train["step"][keep], **{name: train.get(name, nan)[keep] for name in FIELDS}}


def trajectory_summary(trajectory: dict[str, np.ndarray]) -> dict[str, float]:
    """Final sparsities, their error against the final target, and the worst overshoot after the ramp.

    The ramp ends at the first logged step whose target equals the final one.
    """
    target = trajectory["target"]
    final = float(target[-1])
    ramp_end = int(np.argmax(np.isclose(target, final, atol=1e-6)))
    after = slice(ramp_end, None)
    out = {"target": final, "ramp_end_step": int(trajectory["step"][ramp_end])}
    for name in ("expected_sparsity", "hard_sparsity"):
        values = trajectory[name]
        out[f"final_{name}"] = float(values[-1])
        out[f"final_{name}_error"] = float(values[-1] - final)
        out[f"max_{name}_overshoot"] = float(np.nanmax(values[after] - target[after]))
    out["final_lambda_1"] = float(trajectory["lambda_1"][-1])
    out["min_lambda_1"] = float(np.nanmin(trajectory["lambda_1"]))
    return out


def plot_trajectories(path: str | pathlib.Path, runs: dict[str, dict[str, np.ndarray]], title: str = "") -> None:
    """One PNG: a column per run (name -> :func:`read_trajectory`), sparsity on top, ``lambda_1`` below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(runs)
    fig, axes = plt.subplots(2, n, figsize=(max(4.2 * n, 7.0), 5.6), dpi=110, sharex="col", squeeze=False)
    for col, (name, tr) in enumerate(runs.items()):
        top, bottom = axes[0, col], axes[1, col]
        top.plot(tr["step"], tr["target"], color="black", linestyle="--", linewidth=1, label="target")
        top.plot(tr["step"], tr["expected_sparsity"], label="expected")
        top.plot(tr["step"], tr["hard_sparsity"], label="hard (eval mask)")
        top.set_title(name, fontsize=10)
        top.grid(alpha=0.3)
        bottom.plot(tr["step"], tr["lambda_1"], color="tab:red")
        bottom.set_yscale("symlog", linthresh=1.0)
        bottom.grid(alpha=0.3)
        bottom.set_xlabel("step")
    axes[0, 0].set_ylabel("sparsity")
    axes[1, 0].set_ylabel("lambda_1")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def summary_lines(summaries: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table of :func:`trajectory_summary` per run."""
    lines = [
        "| run | target | final hard | final expected | max overshoot after the ramp (hard, expected) "
        "| final lambda_1 | min lambda_1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {s['target']:.3f} | {s['final_hard_sparsity']:.3f} ({s['final_hard_sparsity_error']:+.3f}) "
            f"| {s['final_expected_sparsity']:.3f} ({s['final_expected_sparsity_error']:+.3f}) "
            f"| {s['max_hard_sparsity_overshoot']:+.3f}, {s['max_expected_sparsity_overshoot']:+.3f} "
            f"| {s['final_lambda_1']:.3g} | {s['min_lambda_1']:.3g} |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (with metrics.jsonl)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    if not args.out.endswith(".png"):
        print(f"sparsity_plots.py: --out={args.out!r} must name a .png file.", file=sys.stderr)
        return 2
    try:
        runs = {pathlib.Path(r).name: read_trajectory(r) for r in args.runs}
    except (FileNotFoundError, ValueError) as e:
        print(f"sparsity_plots.py: {e}", file=sys.stderr)
        return 2
    plot_trajectories(args.out, runs, args.title)
    summaries = {name: trajectory_summary(tr) for name, tr in runs.items()}
    out = pathlib.Path(args.out)
    command = command_line("sparsity_plots.py", argv)
    lines = [f"# Sparsity trajectories{': ' + args.title if args.title else ''}", "", f"Made by `{command}`; "
             f"the plot: `{out.name}`. Overshoot: the largest sparsity minus target after the ramp.", "",
             *summary_lines(summaries)]
    write_results(out.parent, out.stem, command, [{"run": k, **v} for k, v in summaries.items()], lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
