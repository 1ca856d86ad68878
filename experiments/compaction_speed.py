"""Training that speeds up as it prunes: a compacting FLOP run against the same run without compaction.

    python experiments/compaction_speed.py --data=FILE --workdir=DIR [--steps=3000] [--target=0.8]
        [--compact-every=100] [--threshold=1e-2] [--model=small|bench|tiny]

Trains two FLOP runs of the SRU char LM on any byte-level text file (split
90/5/5 contiguously: train, valid, test), identical but for
``prune.compact_every``: ``plain`` (0, never) and ``compacting``. Both resume
when rerun. Then it reports

* the result of each: valid/test bpc of the reduced model, hard sparsity:
  compaction must not change them beyond noise;
* the compacting run's training speed over the run, from its metrics
  (examples/s between logs, against hard sparsity and the prunable params
  left): the start (the median of the first logs after the first) and the
  end (logs at or above 80% sparsity);
* the same, clean: one train step of the model at its start shapes and at
  the compacted run's final shapes, timed interleaved in this process.

``--model=small`` is ``experiments/configs/sru_small.py`` (SRU 2 x 256,
rank 64); ``bench`` the shape of the side-by-side with the original code
(SRU 3 x 1024, rank 256, vocab 256), where the matrices are most of a step;
``tiny`` (SRU 2 x 32, batch 4 x 32) is for tests.
Writes ``compaction_speed_<model>_<data file stem>.{md,json}`` to
``--results`` (default ``experiments/results``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

from flaxprune.host_memory import keep_freed_memory
from results_files import command_line, write_results  # experiments/, this script's folder
from text_data import link_text_file
from train_step_call import train_step_call

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("small", "bench", "tiny")
RUNS = (("plain", False), ("compacting", True))
AT_SPARSITY = 0.8  # "at 80% sparsity": the logs at or above it


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a byte-level text file (split 90/5/5)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--compact-every", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=1e-2, help="prune.compact_threshold: P(z != 0) below it")
    parser.add_argument("--model", default="small", help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    problems = []
    data = pathlib.Path(args.data)
    if not data.is_file():
        problems.append(f"--data={args.data!r}: not a file; pass a byte-level text file")
    if args.steps < 10:
        problems.append(f"--steps={args.steps}: accepted: an integer >= 10")
    if not 0.0 < args.target < 1.0:
        problems.append(f"--target={args.target}: accepted: a sparsity in (0, 1)")
    if not 0 < args.compact_every < args.steps:
        problems.append(f"--compact-every={args.compact_every}: accepted: an integer in [1, --steps)")
    if not 0.0 < args.threshold < 0.5:
        problems.append(f"--threshold={args.threshold}: accepted: a probability in (0, 0.5)")
    if args.model not in MODELS:
        problems.append(f"--model={args.model!r}: accepted: {', '.join(MODELS)}")
    if pathlib.Path(args.workdir).is_file():
        problems.append(f"--workdir={args.workdir!r}: is a file; pass a folder (made if missing)")
    return args, problems


def config_for(args, compact: bool, data_dir: pathlib.Path, tfds_dir: pathlib.Path):
    from flaxprune.training.config import load_config_file

    c = load_config_file(ROOT / "experiments" / "configs" / "sru_small.py")
    c.data.name = "text_char"
    c.data.manual_dir = str(data_dir)
    c.data.data_dir = str(tfds_dir)
    c.data.max_bytes = None
    if args.model == "bench":
        c.model.d_model, c.model.n_layers, c.model.rank = 1024, 3, 256
    if args.model == "tiny":  # tests and smoke runs: seconds
        c.model.d_model, c.model.n_layers, c.model.rank = 32, 2, 8
        c.train.batch_size = c.train.eval_batch_size = c.train.speed_batch_size = 4
        c.train.seq_len = 32
    c.train.steps = args.steps
    c.train.log_every = max(1, min(50, args.steps // 40))
    c.train.eval_every = max(1, args.steps // 6)
    c.prune.enabled = True
    c.prune.target = args.target
    c.prune.target_warmup = args.steps * 2 // 5
    c.prune.compact_every = args.compact_every if compact else 0
    c.prune.compact_threshold = args.threshold
    return c


def speed_over_run(metrics_path: pathlib.Path) -> dict:
    """The compacting run's logged speed: per log, examples/s with the latest hard sparsity and params."""
    rows, sparsity, params = [], None, None
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["kind"] == "eval":
            sparsity = r.get("hard_sparsity", sparsity)
        elif r["kind"] == "compact":
            params = r["prunable_params"]
        elif r["kind"] == "train" and math.isfinite(r.get("examples_per_s", float("nan"))):
            rows.append({"step": r["step"], "examples_per_s": r["examples_per_s"],
                         "expected_sparsity": r.get("expected_sparsity"), "hard_sparsity": sparsity,
                         "prunable_params": params})
    start = [r["examples_per_s"] for r in rows[1:6]]  # the first log holds the compile
    end = [r["examples_per_s"] for r in rows if (r["expected_sparsity"] or 0.0) >= AT_SPARSITY]
    out = {"logs": rows, "start_examples_per_s": float(np.median(start)) if start else None,
           "end_examples_per_s": float(np.median(end)) if end else None}
    if start and end:
        out["ratio"] = out["end_examples_per_s"] / out["start_examples_per_s"]
    return out


def step_seconds(configs: dict, repeats: int = 7) -> dict[str, float]:
    """Median seconds of one train step of each ``(config, model_config)``, timed interleaved (fresh params).

    ``model_config`` None: the model ``config`` builds (the start shapes).
    """
    from flaxprune.benchmark_timing import summarize, time_interleaved

    calls = {name: train_step_call(config, model_config) for name, (config, model_config) in configs.items()}
    timings = time_interleaved(calls, repeats=repeats, warmup=2, min_seconds=0.5)
    return {name: summarize(t["samples"])["median_s"] for name, t in timings.items()}


def main(argv=None) -> int:
    keep_freed_memory()  # before the first computation: see flaxprune.host_memory
    args, problems = parse_args(argv)
    if problems:
        print(f"compaction_speed.py: {problems[0]}.", file=sys.stderr)
        return 2
    from flaxprune.training import finished_summary, load_run, train

    workdir = pathlib.Path(args.workdir)
    data_dir, problem = link_text_file(workdir, args.data)  # the text_char builder's single-file layout
    if problem:
        print(f"compaction_speed.py: {problem}.", file=sys.stderr)
        return 2
    source = pathlib.Path(args.data).resolve()
    summaries = {}
    for name, compact in RUNS:
        print(f"== {name} ==", flush=True)
        config = config_for(args, compact, data_dir, workdir / "tfds")
        summary = finished_summary(config, workdir / name) or train(config, workdir / name)
        if summary["status"] != "done":
            return 1
        summaries[name] = summary

    speed = speed_over_run(workdir / "compacting" / "metrics.jsonl")
    full = config_for(args, False, data_dir, workdir / "tfds")
    final_model_config = load_run(workdir / "compacting")[2]
    seconds = step_seconds({"start shapes": (full, None), "final compacted shapes": (full, final_model_config)})
    tokens_per_step = full.train.batch_size * full.train.seq_len
    clean = {name: tokens_per_step / s for name, s in seconds.items()}

    rows = []
    for name, _ in RUNS:
        s = summaries[name]
        rows.append({"run": name, "hard_sparsity": s.get("hard_sparsity"), "reduced_params": s.get("reduced_params"),
                     "valid_bpc": s.get("reduced_valid_bpc"), "test_bpc": s.get("reduced_test_bpc"),
                     "train_sequences_per_s": s.get("train_sequences_per_s")})
    command = command_line("compaction_speed.py", argv)
    lines = [
        f"# Compaction during training: {args.model} SRU on {source.name}",
        "",
        f"Made by `{command}`: {args.steps} steps of {full.train.batch_size} x {full.train.seq_len} bytes, FLOP to "
        f"target {args.target} (ramp over {full.prune.target_warmup} steps); `compacting` drops components with "
        f"P(z != 0) < {args.threshold:g} every {args.compact_every} steps.",
        "",
        "| run | hard sparsity | reduced params | valid bpc | test bpc | mean train sequences/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['hard_sparsity']:.3f} | {r['reduced_params']:,} | {r['valid_bpc']:.4f} | "
                     f"{r['test_bpc']:.4f} | {r['train_sequences_per_s']:.1f} |")
    lines += ["", "Training speed of the compacting run:", ""]
    if speed.get("ratio") is not None:
        lines.append(f"- from its logs: {speed['start_examples_per_s']:.1f} sequences/s at the start, "
                     f"{speed['end_examples_per_s']:.1f} at expected sparsity >= {AT_SPARSITY}: "
                     f"x{speed['ratio']:.2f}.")
    else:
        lines.append(f"- from its logs: expected sparsity never reached {AT_SPARSITY}.")
    names = list(clean)
    lines.append(f"- one train step timed interleaved here: {clean[names[0]]:,.0f} tokens/s at the start shapes, "
                 f"{clean[names[1]]:,.0f} at the final compacted shapes: x{clean[names[1]] / clean[names[0]]:.2f}.")
    lines += ["", "| step | expected sparsity | hard sparsity (last eval) | prunable params | sequences/s |",
              "|---:|---:|---:|---:|---:|"]
    for r in speed["logs"][:: max(1, len(speed["logs"]) // 20)]:
        hard = "-" if r["hard_sparsity"] is None else f"{r['hard_sparsity']:.3f}"
        params = "full" if r["prunable_params"] is None else f"{r['prunable_params']:,}"
        lines.append(f"| {r['step']} | {r['expected_sparsity']:.3f} | {hard} | {params} | {r['examples_per_s']:.1f} |")
    name = f"compaction_speed_{args.model}_{source.stem}"
    write_results(args.results, name, command, [*rows, {"run": "compacting", "kind": "speed", **speed,
                                                        "step_tokens_per_s": clean}], lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
