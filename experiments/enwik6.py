"""sru_small on the 1 MB enwik8 prefix: dense vs FLOP at 50% and 80%, one results table.

    python experiments/enwik6.py --workdir=/tmp/enwik6 [--data=../shared/data/lm] [--steps=3000]

Trains the three runs (each resumable: rerun the command after an
interruption), then loads the dense model and both reduced models into one
process and times them side by side on the same batch, so the speedups are
ratios measured together. Writes ``experiments/results/enwik6_sru_small.{md,json}``.
The data folder must hold ``enwik6`` (the first 10^6 bytes of enwik8; split
90/5/5 into train/valid/test by the Enwik8 builder).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np
from flaxprune.host_memory import keep_freed_memory
from results_files import command_line, write_results  # experiments/, this script's folder
from train_step_call import train_step_call

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNS = (("dense", None), ("flop_50", 0.5), ("flop_80", 0.8))


def config_for(target: float | None, data: pathlib.Path, steps: int):
    from flaxprune.training.config import load_config_file

    c = load_config_file(ROOT / "experiments" / "configs" / "sru_small.py")
    c.data.name = "enwik8"
    c.data.max_bytes = None
    c.data.manual_dir = str(data)
    c.train.steps = steps
    c.prune.target_warmup = steps * 2 // 5
    c.prune.enabled = target is not None
    c.prune.target = target or 0.0
    return c


def train_seconds_per_step(config, repeats: int = 20) -> float:
    """Median seconds of one jitted train step of the model ``config`` builds (fresh params, fixed batch)."""
    import time

    call = train_step_call(config)
    jax.block_until_ready(call())  # compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> int:
    keep_freed_memory()  # before the first computation: see flaxprune.host_memory
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lm"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    data = pathlib.Path(args.data)
    if not (data / "enwik6").is_file():
        print(f"{data / 'enwik6'} is missing: pass --data=DIR holding the 1 MB enwik8 prefix 'enwik6'.")
        return 2

    from flaxprune.training import RunFiles, load_reduced, load_run, time_forward, train

    workdir = pathlib.Path(args.workdir)
    summaries = {}
    for name, target in RUNS:
        print(f"== {name} ==", flush=True)
        summary = train(config_for(target, data, args.steps), workdir / name)
        if summary["status"] != "done":
            return 1
        summaries[name] = summary

    # Side by side: the dense model and the reduced models, same batch, same process.
    c = config_for(None, data, args.steps)
    tokens = np.random.default_rng(0).integers(0, 256, (c.train.speed_batch_size, c.train.seq_len)).astype(np.int32)
    dense_model, dense_params, _, _ = load_run(workdir / "dense")
    models = {"dense": (dense_model, jax.device_get(dense_params))}
    for name, _ in RUNS[1:]:
        model, params, _ = load_reduced(RunFiles(workdir / name).reduced)
        models[name] = (model, jax.device_get(params))
    seconds = {
        name: time_forward(m, p, (tokens, m.initial_carry(tokens.shape[0])), repeats=30)
        for name, (m, p) in models.items()
    }
    # Training throughput, dense vs gated, side by side in this process (the runs' own logs share the CPU).
    tokens_per_step = c.train.batch_size * c.train.seq_len
    train_tok_s = {
        name: tokens_per_step / train_seconds_per_step(config_for(target, data, args.steps)) for name, target in RUNS
    }

    rows = []
    for name, target in RUNS:
        s = summaries[name]
        pruned = target is not None
        rows.append(
            {
                "run": name,
                "target": target,
                "hard_sparsity": s.get("hard_sparsity"),
                "params": s["reduced_params"] if pruned else s["params"],
                "valid_bpc": s["reduced_valid_bpc"] if pruned else s["valid_bpc"],
                "test_bpc": s["reduced_test_bpc"] if pruned else s["test_bpc"],
                "train_tokens_per_s": train_tok_s[name],
                "ms_per_batch": seconds[name] * 1e3,
                "speedup_vs_dense": seconds["dense"] / seconds[name],
            }
        )
    command = command_line("enwik6.py", argv)
    lines = [
        "# sru_small on enwik6 (first 1 MB of enwik8; 90/5/5 split)",
        "",
        f"Made by `{command}` ({args.steps} steps of 16 x 128 bytes each; CPU, {jax.device_count()} device(s)).",
        f"Inference: batch {tokens.shape[0]} x {tokens.shape[1]} bytes, median of 30; training: one jitted step of "
        f"{c.train.batch_size} x {c.train.seq_len} bytes, median of 20; both measured side by side in one process "
        "after the runs (the gated models train at their full shapes: FLOP's speedup comes after shrink).",
        "",
        "| run | hard sparsity | params | valid bpc | test bpc | train tokens/s | ms/batch | speedup vs dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sparsity = "-" if r["hard_sparsity"] is None else f"{r['hard_sparsity']:.3f} (target {r['target']})"
        lines.append(
            f"| {r['run']} | {sparsity} | {r['params']:,} | {r['valid_bpc']:.3f} | {r['test_bpc']:.3f} | "
            f"{r['train_tokens_per_s']:,.0f} | {r['ms_per_batch']:.1f} | x{r['speedup_vs_dense']:.2f} |"
        )
    write_results(args.results, "enwik6_sru_small", command, rows, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
