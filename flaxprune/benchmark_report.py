"""The speed suite's results as Markdown, and writing them with the JSON beside.

:func:`markdown` turns :func:`flaxprune.benchmark.run`'s result into a
summary, then a table per model (inference, then training). :func:`write`
hands the rows and those lines to ``experiments/results_files.py``, which
owns the results files' layout: the generated part is rewritten, the notes
written by hand below its marker are kept.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["markdown", "results_writer", "rows_of", "stem", "summary", "write"]

MB = 1e6
HEADLINE_MIN_BATCH = 8  # the summary averages the cases of at least this batch: batch 1 is dispatch-bound


def stem(result: dict, quick: bool) -> str:
    """``bench_<backend>`` (``bench_cpu``), then ``_bfloat16`` for that dtype and ``_quick`` for a ``--quick`` run."""
    env = result["environment"]
    return f"bench_{env['backend']}" + ("" if env["dtype"] == "float32" else f"_{env['dtype']}") + (
        "_quick" if quick else "")


def results_writer() -> Callable[..., None]:
    """``write_results`` of ``experiments/results_files.py`` (the checkout's; the library does not copy its rule).

    Raises:
      OSError: when there is no ``experiments/results_files.py`` beside the ``flaxprune`` package (an
        installed wheel): the suite writes its results only from a checkout of the repository.
    """
    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "results_files.py"
    if not path.is_file():
        raise OSError(
            f"bench writes its results through experiments/results_files.py, not found at {path}; "
            "run it from a checkout of the flaxprune repository."
        )
    spec = importlib.util.spec_from_file_location("results_files", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_results


def write(result: dict, output: str, quick: bool, writer: Callable[..., None] | None = None) -> pathlib.Path:
    """Writes ``<output>/<stem>.json`` (the environment row, then every timed row) and ``<stem>.md``.

    Returns:
      The Markdown file's path.
    """
    env = result["environment"]
    (writer or results_writer())(output, stem(result, quick), env["command"], [env, *result["rows"]], markdown(result))
    return pathlib.Path(output) / f"{stem(result, quick)}.md"


# --- Markdown ---------------------------------------------------------------------


def _ms(row: dict) -> str:
    return f"{row['median_s'] * 1e3:.2f} ({row['p10_s'] * 1e3:.2f}-{row['p90_s'] * 1e3:.2f})"


def _sparsity(row: dict) -> str:
    if row.get("nominal_sparsity") is None:
        return "-"
    return f"{row['nominal_sparsity']:g} ({row['hard_sparsity']:.3f})"


def _inference_table(rows: list[dict]) -> list[str]:
    lines = [
        "| batch x seq | variant | sparsity (hard) | tokens/s | latency ms, median (p10-p90) | compile s "
        "| params MB | measured | theoretical | efficiency |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["variant"] == "skipped":
            lines.append(f"| {r['batch']} x {r['seq']} | skipped: {r['reason']} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['batch']} x {r['seq']} | {r['variant']} | {_sparsity(r)} | {r['tokens_per_s']:,.0f} | {_ms(r)} "
            f"| {r['compile_s']:.2f} | {r['param_bytes'] / MB:.2f} | {r['measured_speedup']:.2f} "
            f"| {r['theoretical_speedup']:.2f} | {r['efficiency']:.2f} |"
        )
    return lines


def _train_table(rows: list[dict]) -> list[str]:
    lines = [
        "| variant | step ms, median (p10-p90) | tokens/s | compile s | XLA memory MB: arg + out + temp (total) "
        "| params MB | vs ungated | vs dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["memory"]
        memory = (
            f"{m['argument'] / MB:.1f} + {m['output'] / MB:.1f} + {m['temp'] / MB:.1f} ({m['total'] / MB:.1f})"
            if m else "-"
        )
        name = r["variant"] + (" (with the Lagrangian)" if r["lagrangian"] else "")
        lines.append(
            f"| {name} | {_ms(r)} | {r['tokens_per_s']:,.0f} | {r['compile_s']:.2f} | {memory} "
            f"| {r['param_bytes'] / MB:.2f} | {r['vs_ungated']:.2f} | {r['vs_dense']:.2f} |"
        )
    return lines


def summary(rows: list[dict]) -> list[dict]:
    """Per model and level: the medians, over the cases of batch >= 8, of measured, theoretical and efficiency."""
    out = []
    timed = [r for r in rows if r["kind"] == "inference" and r.get("nominal_sparsity") is not None]
    for model in dict.fromkeys(r["model"] for r in timed):
        for level in dict.fromkeys(r["nominal_sparsity"] for r in timed if r["model"] == model):
            cases = [r for r in timed if r["model"] == model and r["nominal_sparsity"] == level]
            big = [r for r in cases if r["batch"] >= HEADLINE_MIN_BATCH] or cases
            out.append({
                "model": model,
                "level": level,
                "hard_sparsity": cases[0]["hard_sparsity"],
                "cases": len(big),
                "batches": sorted({r["batch"] for r in big}),
                **{k: float(np.median([r[k] for r in big])) for k in ("measured_speedup", "theoretical_speedup",
                                                                       "efficiency")},
                "efficiency_min": min(r["efficiency"] for r in big),
                "efficiency_max": max(r["efficiency"] for r in big),
            })
    return out


def markdown(result: dict) -> list[str]:
    """The results file's generated part: how it was made, a summary, then a section per model."""
    env, rows = result["environment"], result["rows"]
    load = env.get("load_average_start"), env.get("load_average_end")
    lines = [
        f"# Speed of the reduced models ({env['backend']})",
        "",
        f"Made by `{env['command']}` (the same as `flaxprune bench` with these flags) in "
        f"{env.get('seconds', 0) / 60:.1f} min, {env['started']}.",
        f"jax {env['jax']}, flax {env['flax']}, Python {env['python']}; backend {env['backend']} "
        f"({env['device_kind']}), {env['cpu_count']} CPUs, XLA_FLAGS='{env['xla_flags']}', "
        f"computation dtype {env['dtype']}; freed host memory kept (flaxprune.host_memory): "
        f"{'yes' if env.get('keep_freed_memory') else 'no'}"
        + (f"; load average {load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end." if all(load) else "."),
        "",
        "Inference: one eval-mode forward call on batch x seq tokens. `gated` is the unpruned model (FLOP's gates, "
        "eval mask, full shapes); `ungated` the same factors without gates; `dense` plain kernels; `pruned_s` the "
        "model `shrink` returns after a fraction s of every gated layer's components is cut. Speedups are "
        "against `gated`: measured = its median latency / this one's; theoretical = its FLOPs / these "
        "(`flaxprune.flops`, the whole model at this batch and seq); efficiency = measured / theoretical. "
        "All variants of a row group are timed interleaved in one process (median and p10-p90 of "
        "the samples). Training: one full step (loss, gradients, `flop_optimizer` update); memory is XLA's "
        "buffer assignment of the compiled step (`memory_analysis()`), not a measured peak.",
        "",
        f"## Summary (medians over the cases of batch >= {HEADLINE_MIN_BATCH})",
        "",
        "| model | sparsity (hard) | measured | theoretical | efficiency (min-max) | train step gated / ungated |",
        "|---|---|---:|---:|---:|---:|",
    ]
    train = {r["model"]: r["vs_ungated"] for r in rows if r["kind"] == "train" and r["variant"] == "gated"}
    for s in summary(rows):
        ratio = f"{train[s['model']]:.2f}" if s["model"] in train else "-"
        lines.append(
            f"| {s['model']} | {s['level']:g} ({s['hard_sparsity']:.3f}) | {s['measured_speedup']:.2f} "
            f"| {s['theoretical_speedup']:.2f} | {s['efficiency']:.2f} ({s['efficiency_min']:.2f}-"
            f"{s['efficiency_max']:.2f}) | {ratio} |"
        )
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        lines += ["", f"## {model}: {mine[0].get('description', '')}".rstrip(": ")]
        inference = [r for r in mine if r["kind"] == "inference"]
        if inference:
            lines += ["", *_inference_table(inference)]
        training = [r for r in mine if r["kind"] == "train"]
        if training:
            lines += ["", f"Training, batch {training[0]['batch']} x {training[0]['seq']}:", "",
                      *_train_table(training)]
    return lines


def rows_of(result: dict, **match: Any) -> list[dict]:
    """The rows whose fields equal ``match`` (e.g. ``model='sru_bench', variant='pruned_0.7'``)."""
    return [r for r in result["rows"] if all(r.get(k) == v for k, v in match.items())]
