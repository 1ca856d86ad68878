"""Training speed and memory of the word-level SRU: full softmax vs adaptive softmax (all logits / cluster-wise).

    python experiments/adaptive_softmax_bench.py [--vocab=33278,267735] [--data=FILE] [--repeats=7]

For each vocabulary size, three variants of ``sru_wt2_small`` (3 SRU layers
of d=256, rank 64, batch 16 x 70 words), one jitted training step each (loss
and gradient), timed interleaved in this process (medians):

* ``full``: one cluster: a tied full softmax, ``[tokens, vocab]`` logits;
* ``adaptive_all``: the adaptive softmax's log-probabilities for every word
  (``AdaptiveSoftmax.__call__``), then the target's;
* ``adaptive``: the cluster-wise loss (``AdaptiveSoftmax.nll``): the head for
  every token, a tail cluster only for the tokens whose target is in it.

Cutoffs: where the tokens' cumulative frequency reaches 80% and 95% (as
``wordlm.py``), ``div_val=2``. Targets follow Zipf's law over the vocabulary
(rank-frequency ``1/r``, words' real shape), or the words of ``--data``
(a text file; its vocabulary is then its own). Memory is XLA's temp buffers
of the compiled step (``memory_analysis``), the working set beyond params and
inputs; the theoretical speedup is the ratio of multiply-adds per token of
the whole model (forward; the backward scales with it). Writes
``experiments/results/adaptive_softmax_<device>.{md,json}``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
from results_files import command_line, write_results  # experiments/, this script's folder
from wordlm import coverage_cutoffs

ROOT = pathlib.Path(__file__).resolve().parents[1]
D, LAYERS, RANK, BATCH, SEQ = 256, 3, 64, 16, 70
VARIANTS = ("full", "adaptive_all", "adaptive")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="33278,267735", help="vocabulary sizes (Zipf targets), comma-separated")
    parser.add_argument("--data", default=None, help="a word-level text file to take the targets from instead")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--d-model", type=int, default=D, help="the SRU's width (and the head band's dims)")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    problems = []
    try:
        args.vocab = [int(v) for v in args.vocab.split(",") if v.strip()]
    except ValueError:
        args.vocab = []
    if not args.vocab or min(args.vocab) < 100:
        problems.append("--vocab: accepted: comma-separated integers >= 100, e.g. 33278,267735")
    if args.data is not None and not pathlib.Path(args.data).is_file():
        problems.append(f"--data={args.data!r}: not a file; pass a word-level text file")
    if args.d_model < 4:
        problems.append(f"--d-model={args.d_model}: accepted: an integer >= 4")
    if args.repeats < 1:
        problems.append(f"--repeats={args.repeats}: accepted: an integer >= 1")
    return args, problems


def corpus_tokens(args) -> list[tuple[str, np.ndarray, int]]:
    """``[(name, ids, vocab_size)]``: a Zipf stream per ``--vocab``, or the words of ``--data``."""
    n = BATCH * SEQ * 4
    if args.data is not None:
        from flaxprune.data.text_file import word_streams

        vocab, streams = word_streams({"train": pathlib.Path(args.data)})
        return [(pathlib.Path(args.data).name, streams["train"][: n + 1], len(vocab))]
    out = []
    for v in args.vocab:
        p = 1.0 / np.arange(1, v + 1)
        out.append((f"zipf_{v}", np.random.default_rng(0).choice(v, n + 1, p=p / p.sum()).astype(np.int32), v))
    return out


def forward_macs_per_token(config, share: np.ndarray, variant: str) -> float:
    """Multiply-adds per token of the whole model's forward pass (``share``: the targets' share per cluster)."""
    d = config.d_model
    clusters = config.clusters
    embed = sum(d_i * d for _, _, d_i in clusters)  # every token goes through every band's projection
    sru = config.n_layers * config.rank * (d + 3 * d)
    heads = d * (len(clusters) - 1)
    per_cluster = [d * d_i + d_i * n_i for _, n_i, d_i in clusters]
    if variant in ("full", "adaptive_all"):
        out = sum(per_cluster) + heads
    else:
        out = per_cluster[0] + heads + sum(s * c for s, c in zip(share[1:], per_cluster[1:]))
    return float(embed + sru + out)


def build_step(variant: str, vocab_size: int, cutoffs, x, y, d: int = D):
    import jax
    import jax.numpy as jnp

    from flaxprune.layers import nll
    from flaxprune.models import WordSRUConfig, WordSRULanguageModel

    config = WordSRUConfig(vocab_size=vocab_size, d_model=d, n_layers=LAYERS, rank=min(RANK, d), d_embed=d,
                           cutoffs=() if variant == "full" else cutoffs, div_val=2, div_freq=1, dropout=0.0,
                           loss_chunk=256)
    model = WordSRULanguageModel(config)
    carry = model.initial_carry(BATCH)
    params = model.init({"params": jax.random.key(0)}, x, carry)["params"]
    rngs = {"gates": jax.random.key(1)}

    def loss(p):
        if variant == "adaptive_all":
            log_probs, _ = model.apply({"params": p}, x, carry, deterministic=False, rngs=rngs)
            return jnp.mean(nll(log_probs, y))
        out, _ = model.apply({"params": p}, x, y, carry, deterministic=False, rngs=rngs, method="token_nll")
        return jnp.mean(out)

    step = jax.jit(jax.value_and_grad(loss))
    compiled = step.lower(params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    return config, (lambda: step(params)), temp


def main(argv=None) -> int:
    args, problems = parse_args(argv)
    if problems:
        print(f"adaptive_softmax_bench.py: {problems[0]}.", file=sys.stderr)
        return 2
    import jax
    import jax.numpy as jnp

    rows = []
    for name, ids, vocab_size in corpus_tokens(args):
        cutoffs = coverage_cutoffs(ids, vocab_size)
        x = jnp.asarray(ids[: BATCH * SEQ].reshape(BATCH, SEQ))
        y = jnp.asarray(ids[1 : BATCH * SEQ + 1].reshape(BATCH, SEQ))
        share = np.bincount(np.searchsorted(np.asarray(cutoffs), np.asarray(y).ravel(), side="right"),
                            minlength=len(cutoffs) + 1) / y.size
        steps = {v: build_step(v, vocab_size, cutoffs, x, y, args.d_model) for v in VARIANTS}
        times = {v: [] for v in VARIANTS}
        for v, (_, call, _) in steps.items():
            jax.block_until_ready(call())  # warm up
        for _ in range(args.repeats):
            for v, (_, call, _) in steps.items():
                t0 = time.perf_counter()
                jax.block_until_ready(call())
                times[v].append(time.perf_counter() - t0)
        macs = {v: forward_macs_per_token(steps[v][0], share, v) for v in VARIANTS}
        for v in VARIANTS:
            median = float(np.median(times[v]))
            rows.append({
                "corpus": name, "vocab_size": vocab_size, "cutoffs": list(cutoffs), "variant": v,
                "tokens_per_s": BATCH * SEQ / median, "step_ms": median * 1e3,
                "temp_mb": steps[v][2] / 2**20, "forward_macs_per_token": macs[v],
                "speedup_vs_full": float(np.median(times["full"])) / median,
                "theoretical_speedup": macs["full"] / macs[v],
                "tail_share": float(1 - share[0]),
            })
        print(f"{name}: done", flush=True)
    device = jax.devices()[0].platform
    command = command_line("adaptive_softmax_bench.py", argv)
    lines = [
        f"# Training step of the word-level SRU: full vs adaptive softmax ({device}, {jax.device_count()} device(s))",
        "",
        f"Made by `{command}`. Model: {LAYERS} SRU layers of d={args.d_model} (rank {min(RANK, args.d_model)}), "
        "tied embedding and softmax, "
        f"batch {BATCH} x {SEQ} tokens; one jitted loss + gradient, median of {args.repeats} interleaved. "
        "Memory: XLA's temp buffers of the compiled step. Theoretical: multiply-adds per token of the whole model.",
        "",
        "| targets | vocab | cutoffs | variant | tokens/s | ms/step | temp MB | speedup vs full | theoretical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['corpus']} | {r['vocab_size']:,} | {r['cutoffs']} | {r['variant']} | {r['tokens_per_s']:,.0f} | "
            f"{r['step_ms']:.0f} | {r['temp_mb']:,.0f} | x{r['speedup_vs_full']:.2f} | "
            f"x{r['theoretical_speedup']:.2f} |"
        )
    write_results(args.results, f"adaptive_softmax_{device}", command, rows, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
