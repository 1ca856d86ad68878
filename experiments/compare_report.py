"""The comparison study's outputs: the Markdown table, the JSON rows and the plot (headless matplotlib)."""

from __future__ import annotations

import math
import pathlib
from typing import Any

from results_files import write_results

__all__ = ["markdown", "plot", "write_report"]

LABELS = {
    "dense": "dense",
    "flop": "FLOP",
    "flop_factorized": "FLOP, layer 0 factorized",
    "agp": "AGP (unstructured)",
    "agp_structured": "AGP structured",
    "l0": "L0 (unstructured)",
    "l0_block": "L0 block",
}


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(command: str, data_name: str, setting: dict, rows: list[dict]) -> list[str]:
    dense = next(r for r in rows if r["method"] == "dense")
    lines = [
        f"# FLOP against its baselines on {data_name}",
        "",
        f"Made by `{command}`.",
        "",
        f"SRU {setting['n_layers']} x {setting['d_model']} char LM, {setting['steps']} steps of {setting['batch']} x "
        f"{setting['seq_len']} bytes per run; vocabulary `data.vocab='{setting['vocab']}'` ({setting['vocab_size']} "
        f"ids). Every sparsity is the dense reference's: the share of the {setting['reference_params']:,} weights of "
        "the dense W matrices that are gone. The ramp to the level ends at step "
        f"{setting['ramp_steps']} for every method (AGP: cubic from step {setting['agp_start']}, masks every "
        f"{setting['agp_frequency']} steps; L0 block: {setting['block'][0]} x {setting['block'][1]} blocks). bpc of "
        "each method's export (reduced model); a train step of each method and inference of each export (batch "
        f"{' x '.join(map(str, setting['inference_batch']))}) timed interleaved in one process.",
        "",
        "| method | level | valid bpc | test bpc | sparsity reached | prunable params kept | train tokens/s | "
        "inference tokens/s | x dense | projections dense / BCOO |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = r["inference_tokens_per_s"] / dense["inference_tokens_per_s"]
        bcoo = "-"
        if r.get("projections_bcoo_s"):
            bcoo = f"x{r['projections_dense_s'] / r['projections_bcoo_s']:.2f}"
        lines.append(
            f"| {LABELS[r['method']]} | {_fmt(r['level'], '.2f')} | {_fmt(r['valid_bpc'], '.4f')} | "
            f"{_fmt(r['test_bpc'], '.4f')} | {_fmt(r['sparsity'], '.3f')} | {r['kept_prunable_params']:,} | "
            f"{_fmt(r['train_tokens_per_s'], ',.0f')} | {_fmt(r['inference_tokens_per_s'], ',.0f')} | "
            f"x{speed:.2f} | {bcoo} |"
        )
    lines += ["", "Kept share of each W (layer 0, layer 1, ...):", "", "| method | level | kept per layer |",
              "|---|---:|---|"]
    for r in rows:
        kept = ", ".join(f"{v:.3f}" for v in r["kept_per_layer"].values())
        lines.append(f"| {LABELS[r['method']]} | {_fmt(r['level'], '.2f')} | {kept} |")
    lines += ["", "`projections dense / BCOO`: every pruned projection `x @ W` of an unstructured export in "
              "`jax.experimental.sparse` BCOO form against its masked dense kernel, on 512 rows (> 1: BCOO is faster)."]
    return lines


def plot(path: pathlib.Path, data_name: str, rows: list[dict]) -> None:
    """Valid bpc against the prunable params kept: a line per method, the dense model as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    dense = next(r for r in rows if r["method"] == "dense")
    ax.axhline(dense["valid_bpc"], color="black", linestyle="--", linewidth=1, label="dense")
    for method in [m for m in LABELS if m != "dense"]:
        points = sorted((r["kept_prunable_params"], r["valid_bpc"]) for r in rows if r["method"] == method)
        if points:
            ax.plot(*zip(*points), marker="o", label=LABELS[method])
    ax.set_xlabel("prunable params kept (dense reference)")
    ax.set_ylabel("valid bpc (export)")
    ax.set_title(f"Pruning methods at equal budgets: {data_name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(directory: str | pathlib.Path, stem: str, command: str, data_name: str, setting: dict,
                 rows: list[dict]) -> None:
    """``<stem>.md`` (the table, notes kept), ``<stem>.json`` (setting and rows) and ``<stem>.png``."""
    lines = markdown(command, data_name, setting, rows)
    write_results(directory, stem, command, [{"setting": setting}, *rows], lines)
    plot(pathlib.Path(directory) / f"{stem}.png", data_name, rows)
    print("\n".join(lines))
