"""The tables of ``wordlm.py``: perplexities, params by part of the model, dims kept per frequency band."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["report_lines", "split_params"]


def split_params(params: Any) -> dict[str, int]:
    """Weights of the adaptive embedding and softmax (``embed``, ``softmax``) and of the SRU layers; gates excluded."""
    out = {"embedding_params": 0, "recurrent_params": 0}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[-1].startswith("log_alpha"):
            continue  # gates: surgery drops them
        part = "recurrent_params" if keys[0].startswith("layers_") else "embedding_params"
        out[part] += int(np.size(leaf))
    return out


def _f(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def report_lines(rows: dict, command: str) -> list[str]:
    """The Markdown of one ``wordlm.py`` result (``rows`` as ``wordlm.py`` builds it)."""
    s = rows["setting"]
    tokens = s["tokens"]
    lines = [
        f"# Word-level SRU with FLOP on the adaptive embedding and the recurrent layers: {s['data']}",
        "",
        f"Made by `{command}`.",
        "",
        f"Data: {s['splits']}; {tokens['train']:,} / {tokens['valid']:,} / {tokens['test']:,} train / valid / test "
        f"tokens, vocabulary {s['vocab_size']:,} (train's words by frequency), cutoffs {s['cutoffs']}. "
        f"{s['steps']} steps of {s['batch']} x {s['seq_len']} words; FLOP's target {s['target']} of every gated "
        "weight (the bands' embedding dims and the recurrent components, one budget, tied weights counted once). "
        "Perplexity: exp of the mean nll per word, the state carried across the split, eval masks.",
        "",
        "| model | valid ppl | test ppl | params | embedding params | recurrent params |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("dense", "dense"), ("flop_gated", "FLOP, gated (eval mask)"),
                        ("flop_reduced", "FLOP, reduced (after shrink)")):
        r = rows[name]
        lines.append(
            f"| {label} | {_f(r['valid_ppl'])} | {_f(r['test_ppl'])} | "
            f"{r['embedding_params'] + r['recurrent_params']:,} | {r['embedding_params']:,} | "
            f"{r['recurrent_params']:,} |"
        )
    hard = rows["flop_gated"].get("hard_sparsity")
    lines += [
        "",
        f"Hard sparsity of the gated weights: {_f(hard, '.3f')} (target {s['target']}).",
        "",
        "Dims kept per frequency band (the embedding and the tied softmax share them):",
        "",
        "| band | ids | share of train tokens | dims | kept | kept % |",
        "|---|---|---|---|---|---|",
    ]
    for b in rows["bands"]:
        lines.append(
            f"| {b['band']} | [{b['ids'][0]:,}, {b['ids'][1]:,}) | {b['train_token_share']:.1%} | {b['dims']} | "
            f"{b['kept']} | {b['kept'] / b['dims']:.0%} |"
        )
    ranks = ", ".join(f"{k} {v}/{rows['full_rank']}" for k, v in rows["recurrent_ranks"].items())
    lines += ["", f"Recurrent layers, factorized components kept: {ranks}."]
    return lines
