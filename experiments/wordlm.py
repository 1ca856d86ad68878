"""Word-level LM with FLOP on the adaptive embedding and the recurrent layers: dense vs pruned, one table.

    python experiments/wordlm.py --data=DIR --workdir=OUT [--steps=N] [--target=0.5] [--cutoffs=auto]

Trains ``sru_wt2_small`` (3 SRU layers of d=256 between a tied adaptive
embedding and softmax) twice on the word corpus in DIR: dense, and with FLOP
at ``--target`` sparsity of every gated weight, the bands' embedding dims and
the factorized recurrent components under one budget. Each run resumes: rerun
the command after an interruption. Writes ``experiments/results/wordlm_<name>.{md,json}``
(``<name>``: DIR's folder name): perplexity dense vs FLOP (gated and reduced),
the params of the embeddings and of the recurrent layers before and after, and
the dims each frequency band keeps.

DIR holds ``wiki.{train,valid,test}.tokens`` or ``{train,valid,test}.txt``
(whitespace-tokenized, one ``<eos>`` per line; the vocabulary is train's, by
frequency), or one ``text.txt`` (split 90/5/5). A DIR with valid and test but
no train (``../shared/data/lm/wikitext-2/``) is trained on its valid file:
its first 90% of lines train, its last 10% validate (checkpoint choice), and
the test file gives the reported numbers; the table says so. The band cutoffs
follow the corpus (``--cutoffs=auto``): the ids where the training tokens'
cumulative frequency reaches 80% and 95%, so the head holds the words of 80%
of the text whatever the vocabulary; ``--cutoffs=config`` takes the config's,
``--cutoffs=2000,10000`` the ones given.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
from flaxprune.host_memory import keep_freed_memory
from results_files import command_line, write_results  # experiments/, this script's folder
from wordlm_report import report_lines, split_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
COVERAGE = (0.8, 0.95)  # auto cutoffs: the head covers 80% of the training tokens, the next band up to 95%
SOURCE = "source.json"  # what this script wrote into <workdir>/data, and from which files


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of a word-level corpus (see the module docstring)")
    parser.add_argument("--workdir", required=True, help="the runs, their data and tfds files (made if missing)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each run")
    parser.add_argument("--target", type=float, default=0.5, help="FLOP's target sparsity, in (0, 1)")
    parser.add_argument("--cutoffs", default="auto", help="'auto', 'config' or comma-separated ids, e.g. 2000,10000")
    parser.add_argument("--config", default=str(ROOT / "experiments" / "configs" / "sru_wt2_small.py"))
    parser.add_argument("--tiny", action="store_true", help="a tiny model and batch (tests)")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    problems = []
    if not pathlib.Path(args.data).is_dir():
        problems.append(f"--data={args.data!r}: not a folder; pass the folder of a word-level corpus")
    if args.steps < 10:
        problems.append(f"--steps={args.steps}: accepted: an integer >= 10")
    if not 0.0 < args.target < 1.0:
        problems.append(f"--target={args.target}: accepted: a sparsity in (0, 1), e.g. 0.5")
    if args.cutoffs not in ("auto", "config"):
        try:
            args.cutoffs = tuple(int(x) for x in args.cutoffs.split(",") if x.strip())
        except ValueError:
            problems.append(f"--cutoffs={args.cutoffs!r}: accepted: 'auto', 'config' or increasing integers, e.g. "
                            "2000,10000")
    if pathlib.Path(args.workdir).is_file():
        problems.append(f"--workdir={args.workdir!r}: is a file; pass a folder (made if missing)")
    return args, problems


def _describe(path) -> dict:
    path = pathlib.Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size}


def prepare_data(data: pathlib.Path, workdir: pathlib.Path) -> tuple[pathlib.Path, str, str | None]:
    """``(manual dir, how the splits were made, problem)``: DIR itself, or the valid-file split this writes.

    The problem is one line (nothing written) for a folder without a usable layout, or a workdir whose
    data this script did not write or wrote from other files.
    """
    from flaxprune.data.text_file import find_text_files

    try:
        files = find_text_files(data)
    except (FileNotFoundError, ValueError) as e:
        return data, "", str(e)
    if "train" in files or "text" in files:
        if "text" in files:
            return data, f"{files['text'].name} split 90/5/5 (train/valid/test)", None
        names = ", ".join(f"{s}: {p.name}" for s, p in files.items())
        return data, f"as given ({names})", None
    if not {"valid", "test"} <= set(files):
        return data, "", (f"--data={str(data)!r} has {sorted(p.name for p in files.values())} but no train file; "
                          "accepted: train (+ valid, test), or valid and test (train on valid), or text.txt")
    out = workdir / "data"
    source = {"valid": _describe(files["valid"]), "test": _describe(files["test"])}
    how = (f"trained on the first 90% of the lines of {files['valid'].name}, validated on its last 10%, "
           f"tested on {files['test'].name}")
    record = out / SOURCE
    if record.is_file():
        if json.loads(record.read_text()) != source:
            return out, how, (f"--workdir={str(workdir)!r} was made from {record.read_text().strip()}; pass that "
                              "data or a new workdir")
        return out, how, None
    if out.exists():
        return out, how, f"{out} exists and was not made by this script; pass a new workdir"
    lines = pathlib.Path(files["valid"]).read_text(encoding="utf-8").splitlines(keepends=True)
    cut = len(lines) * 9 // 10
    out.mkdir(parents=True)
    (out / "train.txt").write_text("".join(lines[:cut]), encoding="utf-8")
    (out / "valid.txt").write_text("".join(lines[cut:]), encoding="utf-8")
    (out / "test.txt").symlink_to(pathlib.Path(files["test"]).resolve())
    record.write_text(json.dumps(source))
    return out, how, None


def coverage_cutoffs(train: np.ndarray, vocab_size: int, coverage=COVERAGE) -> tuple[int, ...]:
    """Ids where the cumulative frequency of the (frequency-ordered) training tokens reaches each ``coverage``."""
    counts = np.bincount(np.asarray(train, np.int64), minlength=vocab_size)
    cumulative = np.cumsum(counts) / max(1, counts.sum())
    cuts = sorted({int(np.searchsorted(cumulative, q)) + 1 for q in coverage})
    return tuple(c for c in cuts if 0 < c < vocab_size)


def config_for(args, manual_dir: pathlib.Path, workdir: pathlib.Path, cutoffs, target: float | None):
    from flaxprune.training.config import load_config_file

    c = load_config_file(args.config)
    c.data.name = "text_word"
    c.data.manual_dir = str(manual_dir)
    c.data.data_dir = str(workdir / "tfds")
    c.data.vocab = None
    if cutoffs is not None:
        c.model.cutoffs = tuple(cutoffs)
    c.train.batch_size = 16
    if args.tiny:
        c.model.d_model = c.model.d_embed = 32
        c.model.n_layers, c.model.rank = 1, 8
        c.train.batch_size = c.train.eval_batch_size = c.train.speed_batch_size = 2
        c.train.seq_len = 16
    c.train.steps = args.steps
    c.train.log_every = max(1, min(50, args.steps // 40))
    c.train.eval_every = c.train.checkpoint_every = max(1, args.steps // 8)
    if args.tiny:
        c.train.eval_every = c.train.checkpoint_every = max(1, args.steps // 2)
    c.prune.enabled = target is not None
    c.prune.target = target or 0.0
    c.prune.target_warmup = args.steps * 2 // 5
    return c


def main(argv=None) -> int:
    keep_freed_memory()  # before the first computation: see flaxprune.host_memory
    args, problems = parse_args(argv)
    if problems:
        print(f"wordlm.py: {problems[0]}.", file=sys.stderr)
        return 2
    data, workdir = pathlib.Path(args.data), pathlib.Path(args.workdir)
    manual_dir, how, problem = prepare_data(data, workdir)
    if problem:
        print(f"wordlm.py: {problem}.", file=sys.stderr)
        return 2
    import jax

    from flaxprune.data.corpus import load_corpus
    from flaxprune.training import finished_summary, load_run, train
    from flaxprune.training.checkpoint import load_reduced
    from flaxprune.training.loop import prepare

    try:
        corpus = load_corpus("text_word", workdir / "tfds", manual_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"wordlm.py: {e}", file=sys.stderr)
        return 2
    if args.cutoffs == "auto":
        cutoffs = coverage_cutoffs(corpus.train, corpus.vocab_size)
    elif args.cutoffs == "config":
        cutoffs = tuple(config_for(args, manual_dir, workdir, None, None).model.cutoffs)
    else:
        cutoffs = args.cutoffs
    runs = {"dense": None, f"flop_{args.target:g}": args.target}
    configs = {name: config_for(args, manual_dir, workdir, cutoffs, t) for name, t in runs.items()}
    for name, config in configs.items():  # every config checked (cutoffs, data, batches) before the first run
        try:
            prepare(config, workdir / name)
        except (FileNotFoundError, ValueError) as e:
            print(f"wordlm.py: {e}", file=sys.stderr)
            return 2
    summaries = {}
    for name, config in configs.items():
        print(f"== {name} (cutoffs {cutoffs}, vocabulary {corpus.vocab_size:,}) ==", flush=True)
        summary = finished_summary(config, workdir / name) or train(config, workdir / name)
        if summary["status"] != "done":
            return 1
        summaries[name] = summary

    _, dense_params, dense_config, _ = load_run(workdir / "dense")
    pruned = next(n for n, t in runs.items() if t is not None)
    _, gated_params, gated_config, _ = load_run(workdir / pruned)
    _, reduced_params, reduced_config = load_reduced(workdir / pruned / "reduced")
    bands = np.bincount(np.searchsorted(np.asarray(cutoffs), corpus.train, side="right"), minlength=len(cutoffs) + 1)
    spec = reduced_config.plan.spec("embed")
    rows = {
        "setting": {
            "data": str(data.resolve()), "splits": how, "vocab_size": corpus.vocab_size, "cutoffs": list(cutoffs),
            "steps": args.steps, "target": args.target, "batch": configs["dense"].train.batch_size,
            "seq_len": configs["dense"].train.seq_len, "tokens": {s: int(len(getattr(corpus, s)))
                                                                 for s in ("train", "valid", "test")},
        },
        "dense": {**_scores(summaries["dense"], ""), **split_params(jax.device_get(dense_params))},
        "flop_gated": {**_scores(summaries[pruned], ""), "hard_sparsity": summaries[pruned].get("hard_sparsity"),
                       **split_params(jax.device_get(gated_params))},
        "flop_reduced": {**_scores(summaries[pruned], "reduced_"), **split_params(jax.device_get(reduced_params))},
        "bands": [
            {"band": i, "ids": [int(s), int(s + n)], "train_token_share": float(bands[i] / bands.sum()),
             "dims": int(d), "kept": int(spec.dims[i]) if spec is not None else int(d)}
            for i, (s, n, d) in enumerate(gated_config.clusters)
        ],
        "recurrent_ranks": {
            f"layers_{i}": int(reduced_config.plan.spec(f"layers_{i}/W").rank)
            if reduced_config.plan.spec(f"layers_{i}/W") is not None else int(dense_config.rank)
            for i in range(dense_config.n_layers)
        },
        "full_rank": int(dense_config.rank),
    }
    command = command_line("wordlm.py", argv)
    lines = report_lines(rows, command)
    write_results(args.results, f"wordlm_{data.resolve().name}", command, [rows], lines)
    print("\n".join(lines))
    return 0


def _scores(summary: dict, prefix: str) -> dict:
    return {k: summary.get(f"{prefix}{k}") for k in ("valid_ppl", "test_ppl", "params")}


if __name__ == "__main__":
    sys.exit(main())
