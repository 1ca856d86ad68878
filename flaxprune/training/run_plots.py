"""PNG plots of a run directory: its curves, its sparsity against the target, and its kept ranks.

:func:`plot_run` reads what a run wrote (``metrics.jsonl``, and for a
pruning run its best or newest checkpoint) and writes, beside
``metrics.jsonl``:

* ``plot_training.png`` -- the training loss (and the task's own training
  metric: bpc, accuracy, ...) and every ``valid_*`` score of the evaluations
  over steps;
* ``plot_sparsity.png`` (pruning runs) -- the target, expected and hard
  sparsity over steps, and the multipliers ``lambda_1``, ``lambda_2`` on a
  symmetric log scale;
* ``plot_ranks.png`` (runs with gates in their checkpoint) -- a heatmap of
  the kept rank of every pruned matrix, a row per layer and a column per
  projection, each cell the kept rank over the rank it started with.

The loop calls it at the end of every run (:func:`flaxprune.training.train`)
and ``flaxprune plot --workdir=DIR`` at any time, during a run too. The
files are the run's own (``PLOT_FILES``); nothing else is written or
replaced. matplotlib draws headless (the Agg backend); reading
``metrics.jsonl`` needs only json.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["PLOT_FILES", "RankCell", "plot_run", "rank_grid", "read_metrics"]

PLOT_FILES = ("plot_training.png", "plot_sparsity.png", "plot_ranks.png")
SPARSITY_FIELDS = ("target", "expected_sparsity", "hard_sparsity", "lambda_1", "lambda_2")
_NOT_CURVES = {"step", "kind", "examples_per_s", "learning_rate", "grad_norm", *SPARSITY_FIELDS}
_LAYER = re.compile(r"^(.*?[A-Za-z]+_\d+)/(.+)$")  # 'bert/encoder/layer_3' + 'attention/query'


def read_metrics(workdir: str | pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
    """``{kind: {field: values over steps}}`` from ``workdir/metrics.jsonl`` (``'step'`` among the fields).

    A resumed run logs some steps twice: the last row of a kind and step
    wins. A field missing from a row reads NaN; a row that is not JSON (a
    line cut by a crash) is skipped.

    Raises:
      FileNotFoundError: if there is no ``metrics.jsonl``.
    """
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a flaxprune run directory (or has not logged).")
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "kind" in row and "step" in row:
            rows.setdefault(str(row["kind"]), {})[int(row["step"])] = row
    out = {}
    for kind, by_step in rows.items():
        steps = sorted(by_step)
        fields = sorted({k for r in by_step.values() for k, v in r.items() if _is_number(v)} - {"step"})
        out[kind] = {"step": np.asarray(steps)}
        for name in fields:
            out[kind][name] = np.asarray([_number(by_step[s].get(name)) for s in steps], dtype=float)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any) -> float:
    return float(v) if _is_number(v) else np.nan


class RankCell(NamedTuple):
    """A pruned matrix in the heatmap."""

    kept: int  # components the eval masks keep
    full: int  # components it started with


def rank_grid(rows: Sequence[Any]) -> tuple[list[str], list[str], dict[tuple[str, str], RankCell]]:
    """``(layers, projections, cells)`` of a per-layer report (:func:`flaxprune.size.report` rows).

    A row's path splits at its last ``name_<digits>`` component: the layer
    (``bert/encoder/layer_3``) and the projection within it
    (``attention/query``); a path with no numbered component is a projection
    of the layer ``'(model)'``. Rows without gates (plain dense layers,
    ``'other'``, ``'bias_only'``) are left out.
    """
    layers: list[str] = []
    projections: list[str] = []
    cells: dict[tuple[str, str], RankCell] = {}
    for row in rows:
        if not row.gated:
            continue
        match = _LAYER.match(row.path)
        layer, projection = (match.group(1), match.group(2)) if match else ("(model)", row.path)
        if layer not in layers:
            layers.append(layer)
        if projection not in projections:
            projections.append(projection)
        cells[(layer, projection)] = RankCell(int(row.rank), int(row.full_rank))
    return layers, projections, cells


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: pathlib.Path) -> pathlib.Path:
    """Lays ``fig`` out, writes it to ``path`` (a reader never sees half a file) and closes it."""
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path


def plot_training(path: pathlib.Path, metrics: Mapping[str, Mapping[str, np.ndarray]], title: str) -> pathlib.Path:
    """Training loss (and the task's training metric) and the evaluations' ``valid_*`` scores over steps."""
    plt = _pyplot()
    train, evals = metrics.get("train", {}), metrics.get("eval", {})
    train_curves = [k for k in train if k not in _NOT_CURVES and not k.startswith("valid_")]
    valid_curves = [k for k in evals if k.startswith("valid_")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, squeeze=False)
    left, right = axes[0]
    for name in train_curves:
        left.plot(train["step"], train[name], label=name, linewidth=1)
    left.set_title("training", fontsize=10)
    for name in valid_curves:
        right.plot(evals["step"], evals[name], marker="o", markersize=3, label=name)
    right.set_title("evaluation", fontsize=10)
    for ax, curves in ((left, train_curves), (right, valid_curves)):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    return _save(plt, fig, path)


def plot_sparsity(path: pathlib.Path, train: Mapping[str, np.ndarray], title: str) -> pathlib.Path:
    """Target, expected and hard sparsity over steps on top, the multipliers below (symmetric log scale)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), dpi=100, sharex=True)
    step = train["step"]
    top.plot(step, train["target"], color="black", linestyle="--", linewidth=1, label="target")
    for name, label in (("expected_sparsity", "expected"), ("hard_sparsity", "hard (eval masks)")):
        if name in train:
            top.plot(step, train[name], label=label)
    top.set_ylabel("sparsity")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    for name in ("lambda_1", "lambda_2"):
        if name in train:
            bottom.plot(step, train[name], label=name)
    bottom.set_yscale("symlog", linthresh=1.0)
    bottom.set_ylabel("multipliers")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(plt, fig, path)


def plot_ranks(path: pathlib.Path, rows: Sequence[Any], title: str) -> pathlib.Path:
    """Heatmap of kept rank / starting rank, a row per layer and a column per projection, kept ranks written in."""
    plt = _pyplot()
    layers, projections, cells = rank_grid(rows)
    grid = np.full((len(layers), len(projections)), np.nan)
    for (layer, projection), (kept, full) in cells.items():
        grid[layers.index(layer), projections.index(projection)] = kept / full if full else np.nan
    fig, ax = plt.subplots(
        figsize=(max(5.0, 1.3 * len(projections) + 2.5), max(2.5, 0.45 * len(layers) + 1.8)), dpi=100
    )
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for (layer, projection), (kept, full) in cells.items():
        i, j = layers.index(layer), projections.index(projection)
        ax.text(j, i, f"{kept}/{full}", ha="center", va="center", fontsize=7,
                color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(projections)), projections, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    fig.colorbar(image, ax=ax, label="kept / starting rank")
    ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def plot_run(workdir: str | pathlib.Path, rows: Sequence[Any] | None = None) -> list[pathlib.Path]:
    """Writes the run's plots beside its ``metrics.jsonl``; returns the files written.

    Args:
      workdir: a run directory (one that has logged: it holds ``metrics.jsonl``).
      rows: the per-layer report of its gated params, for the ranks' heatmap;
        None reads the run's best checkpoint (else its newest) when it has
        gates, and skips the heatmap when it has none.

    Raises:
      FileNotFoundError: if ``workdir`` holds no ``metrics.jsonl``.
    """
    workdir = pathlib.Path(workdir)
    metrics = read_metrics(workdir)
    name = workdir.resolve().name
    written = [plot_training(workdir / PLOT_FILES[0], metrics, name)]
    train = metrics.get("train", {})
    if "target" in train and np.any(np.isfinite(train["target"]) & (train["target"] != 0)):
        written.append(plot_sparsity(workdir / PLOT_FILES[1], train, f"{name}: sparsity"))
    if rows is None:
        rows = _gated_report(workdir)
    if rows:
        written.append(plot_ranks(workdir / PLOT_FILES[2], rows, f"{name}: kept ranks"))
    return written


def _gated_report(workdir: pathlib.Path) -> list[Any] | None:
    """The per-layer report of the run's best (else newest) checkpoint, if it has one with gates."""
    from flaxprune.size import gate_groups, report
    from flaxprune.training.runs import load_run

    for which in ("best", "checkpoints"):
        try:
            _, params, config, _ = load_run(workdir, which)
        except FileNotFoundError:
            continue
        if not gate_groups(params):
            return None
        return report(params, config)
    return None
