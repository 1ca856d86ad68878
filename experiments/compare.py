"""FLOP against its baselines at equal parameter budgets, on any byte-level text file.

    python experiments/compare.py --data=FILE --workdir=DIR [--steps=3000] [--levels=0.5,0.7,0.9]
        [--methods=flop,agp,agp_structured,l0,l0_block] [--model=small|tiny] [--results=DIR]

Trains the CPU-sized SRU char LM (``experiments/configs/sru_small.py``: 2 x
256, the first layer's input size set to 256 so that every pruned matrix is
256 x 768 and 16 x 16 blocks divide it; batches of 8 x 128 bytes) on ``--data`` (split 90/5/5
contiguously; ids are the corpus's own symbols, ``data.vocab='corpus'``):
once dense, then with every method at every level, the same steps, data,
learning rates and schedule for all:

* the sparsity ramp (FLOP's target, L0's target, AGP's cubic schedule) ends
  at half the run, so every method has the second half at its level;
  AGP starts pruning at a tenth of the run (magnitudes of trained weights);
* FLOP factorizes at the parameter-neutral rank (``in * out // (in + out)``),
  so its open model holds exactly the dense model's weights; ``flop`` gates
  the first layer's inputs as FLOP's SRU does, ``flop_factorized`` factorizes
  it like the others; every sparsity is
  the dense reference's (:mod:`flaxprune.dense_reference`): a 70% model of
  any method keeps 30% of the dense matrices' weights.

Every run resumes when the command is rerun (finished runs are read back).
Then one train step of each method is timed, and each method's export
(FLOP and structured AGP: smaller dense matrices; AGP and L0: a masked
dense model), all interleaved in this process, and the unstructured exports'
projections once more in BCOO form. Writes
``compare_<file stem>.{md,json,png}`` to ``--results`` (default
``experiments/results``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

from compare_report import write_report
from flaxprune.host_memory import keep_freed_memory
from results_files import command_line
from text_data import link_text_file
from train_step_call import train_step_call

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The study's methods: prune.method's, and FLOP with its first layer factorized like the others
# ('flop_factorized': model.input_gated_first=False) instead of gating its inputs (FLOP's SRU).
METHODS = ("flop", "flop_factorized", "agp", "agp_structured", "l0", "l0_block")
DEFAULT_METHODS = ("flop", "agp", "agp_structured", "l0", "l0_block")
MODELS = ("small", "tiny")
MIN_BYTES = 100_000
# Rows of x in the BCOO timing: XLA:CPU's sparse product gathers an [nnz, rows] intermediate (6 GB per
# 256 x 768 matrix at 8,192 rows), so it is timed on a slice of the inference batch.
BCOO_ROWS = 512


def parse_levels(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a byte-level text file of 100 KB or more (split 90/5/5)")
    parser.add_argument("--workdir", required=True, help="one run folder per method and level (made if missing)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every run")
    parser.add_argument("--levels", default="0.5,0.7,0.9", help="sparsities, comma-separated, each in [0, 1)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"a comma-separated subset of {METHODS}")
    parser.add_argument("--model", default="small", help=f"one of {', '.join(MODELS)} (tiny: tests)")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    problems = []
    data = pathlib.Path(args.data)
    if not data.is_file():
        problems.append(f"--data={args.data!r}: not a file; pass a byte-level text file of 100 KB or more")
    elif args.model != "tiny" and data.stat().st_size < MIN_BYTES:
        problems.append(f"--data={args.data!r}: {data.stat().st_size:,} bytes; accepted: a text file of "
                        f"{MIN_BYTES:,} bytes or more")
    if args.steps < 10:
        problems.append(f"--steps={args.steps}: accepted: an integer >= 10")
    try:
        args.levels = parse_levels(args.levels)
    except ValueError:
        problems.append(f"--levels={args.levels!r}: accepted: comma-separated numbers in [0, 1), e.g. 0.5,0.7,0.9")
        args.levels = []
    bad = [x for x in args.levels if not (math.isfinite(x) and 0.0 <= x < 1.0)]
    if bad or (not args.levels and not problems):
        problems.append(f"--levels={','.join(map(str, args.levels))}: level {bad[0] if bad else 'none'} is not "
                        "accepted: each level is a sparsity in [0, 1)")
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        problems.append(f"--methods: {unknown[0] if unknown else 'none'} is not a method; accepted: "
                        f"{', '.join(METHODS)}")
    if args.model not in MODELS:
        problems.append(f"--model={args.model!r}: accepted: {', '.join(MODELS)}")
    if pathlib.Path(args.workdir).is_file():
        problems.append(f"--workdir={args.workdir!r}: is a file; pass a folder (made if missing)")
    return args, problems


def run_name(method: str | None, level: float | None) -> str:
    return "dense" if method is None else f"{method}_{level:g}"


def config_for(args, method: str | None, level: float | None, data_dir: pathlib.Path, tfds_dir: pathlib.Path):
    """The run's config: ``method`` None is the dense model (plain kernels, no pruning)."""
    from flaxprune.training.config import load_config_file

    c = load_config_file(ROOT / "experiments" / "configs" / "sru_small.py")
    c.data.name = "text_char"
    c.data.manual_dir = str(data_dir)
    c.data.data_dir = str(tfds_dir)
    c.data.max_bytes = None
    c.data.vocab = "corpus"
    c.model.rank = None  # FLOP: parameter-neutral, the open model holds the dense model's weights
    c.train.batch_size = 8  # 16 runs of 3000 steps fit about 90 minutes of 2 CPU cores
    if args.model == "tiny":
        c.model.d_model, c.model.n_layers = 32, 2
        c.train.batch_size = c.train.eval_batch_size = c.train.speed_batch_size = 4
        c.train.seq_len = 32
        c.prune.block = (8, 8)
    c.model.embed_dim = c.model.d_model  # every W is d x 3d: the same shape for every method and block
    c.train.steps = args.steps
    c.train.log_every = max(1, min(50, args.steps // 40))
    c.train.eval_every = max(1, args.steps // 6)
    c.train.checkpoint_every = max(1, min(500, args.steps // 6))
    c.prune.enabled = method is not None
    c.prune.method = method or "agp"  # the dense run: AGP's model (plain kernels), never pruned
    if method == "flop_factorized":
        c.prune.method, c.model.input_gated_first = "flop", False
    c.prune.target = level or 0.0
    c.prune.basis = "dense"
    c.prune.target_warmup = args.steps // 2
    c.prune.agp_start = args.steps // 10
    c.prune.agp_frequency = max(1, min(100, args.steps // 30))
    return c


def train_rate(metrics_path: pathlib.Path) -> float | None:
    """Median training sequences/s over the run's logs (the first, which holds the compile, left out)."""
    rates = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["kind"] == "train" and math.isfinite(r.get("examples_per_s", float("nan"))):
            rates.append(r["examples_per_s"])
    return float(np.median(rates[1:])) if len(rates) > 1 else None


def kept_per_layer(params, model_config) -> dict[str, float]:
    """The share of each pruned matrix's dense weights that a run keeps."""
    from flaxprune.dense_reference import kept_weights

    shapes = model_config.prunable_shapes
    return {path: float(kept_weights(params, model_config, {path: shape})) / (shape[0] * shape[1])
            for path, shape in shapes.items()}


def bcoo_projection_seconds(params, model_config, tokens: int) -> tuple[float, float] | None:
    """Median seconds of every pruned projection ``x @ W`` for ``tokens`` rows: masked dense, then BCOO.

    None where a W is not a plain kernel (FLOP, structured AGP: their export is already smaller matrices).
    """
    import jax
    import jax.numpy as jnp
    from jax.experimental import sparse

    from flaxprune.benchmark_timing import summarize, time_interleaved
    from flaxprune.param_tree import node_at

    kernels = [node_at(params, path) for path in model_config.prunable_shapes]
    if any(k is None or set(k) - {"kernel", "bias"} for k in kernels):
        return None
    dense = [jnp.asarray(k["kernel"]) for k in kernels]
    coo = [sparse.BCOO.fromdense(k) for k in dense]
    xs = [jax.random.normal(jax.random.key(i), (tokens, k.shape[0])) for i, k in enumerate(dense)]
    dense_fn = jax.jit(lambda ws, xs: [x @ w for x, w in zip(xs, ws)])
    sparse_fn = jax.jit(lambda ws, xs: [x @ w for x, w in zip(xs, ws)])
    timings = time_interleaved({"dense": lambda: dense_fn(dense, xs), "bcoo": lambda: sparse_fn(coo, xs)},
                               repeats=7, warmup=2, min_seconds=0.2)
    return tuple(summarize(timings[k]["samples"])["median_s"] for k in ("dense", "bcoo"))


def train_step_seconds(configs: dict) -> dict[str, float]:
    """Median seconds of one train step of each config (fresh params, a fixed batch), timed interleaved."""
    from flaxprune.benchmark_timing import summarize, time_interleaved

    calls = {name: train_step_call(config) for name, config in configs.items()}
    timings = time_interleaved(calls, repeats=7, warmup=2, min_seconds=0.5)
    return {name: summarize(t["samples"])["median_s"] for name, t in timings.items()}


def time_exports(exports: dict, inputs: tuple) -> dict[str, float]:
    """Median seconds of one deterministic forward pass of each ``(model, params)``, interleaved."""
    import jax

    from flaxprune.benchmark_timing import summarize, time_interleaved

    calls = {}
    for name, (model, params) in exports.items():
        fn = jax.jit(lambda p, args, model=model: model.apply({"params": p}, *args, deterministic=True))
        calls[name] = lambda fn=fn, params=params: fn(params, inputs)
    timings = time_interleaved(calls, repeats=7, warmup=2, min_seconds=0.3)
    return {name: summarize(t["samples"])["median_s"] for name, t in timings.items()}


def main(argv=None) -> int:
    keep_freed_memory()  # before the first computation: see flaxprune.host_memory
    args, problems = parse_args(argv)
    if problems:
        print(f"compare.py: {problems[0]}.", file=sys.stderr)
        return 2
    workdir = pathlib.Path(args.workdir)
    data_dir, problem = link_text_file(workdir, args.data)
    if problem:
        print(f"compare.py: {problem}.", file=sys.stderr)
        return 2
    import jax

    from flaxprune.training import finished_summary, load_run, train
    from flaxprune.training.checkpoint import load_reduced
    from flaxprune.training.lm_task import build_lm_task
    from flaxprune.training.sharding import make_mesh

    runs = [(None, None)] + [(m, level) for level in args.levels for m in args.methods]
    configs = {run_name(m, lv): (m, lv, config_for(args, m, lv, data_dir, workdir / "tfds")) for m, lv in runs}
    # Every config is checked (data, model, blocks) before the first run trains.
    from flaxprune.training.loop import prepare

    for name, (_, _, config) in configs.items():
        prepare(config, workdir / name)
    summaries = {}
    for name, (_, _, config) in configs.items():
        print(f"== {name} ==", flush=True)
        summary = finished_summary(config, workdir / name) or train(config, workdir / name)
        if summary["status"] != "done":
            return 1
        summaries[name] = summary

    dense_config = configs["dense"][2]
    task = build_lm_task(dense_config, make_mesh(None))
    inputs = task.speed_inputs()
    exports, rows = {}, []
    for name, (method, level, config) in configs.items():
        s = summaries[name]
        if method is None:
            model, params, model_config, _ = load_run(workdir / name)
        else:
            model, params, model_config = load_reduced(workdir / name / "reduced")
        params = jax.device_get(params)
        exports[name] = (model, params)
        bcoo = None if method is None else bcoo_projection_seconds(params, model_config, BCOO_ROWS)
        rows.append({
            "run": name, "method": method or "dense", "level": level,
            "valid_bpc": s.get("reduced_valid_bpc", s.get("valid_bpc")),
            "test_bpc": s.get("reduced_test_bpc", s.get("test_bpc")),
            "sparsity": s.get("reference_sparsity", 0.0),
            "kept_prunable_params": None, "export_params": s.get("reduced_params", s.get("params")),
            "train_tokens_per_s_logged": (train_rate(workdir / name / "metrics.jsonl") or float("nan"))
            * config.train.seq_len,
            "kept_per_layer": kept_per_layer(params, model_config),
            "projections_dense_s": None if bcoo is None else bcoo[0],
            "projections_bcoo_s": None if bcoo is None else bcoo[1],
            "final_params_from": s.get("final_params_from"),
        })
    from flaxprune.dense_reference import reference_params

    reference = reference_params(task.model_config.prunable_shapes)
    seconds = time_exports(exports, inputs)
    # Training speed does not depend on the level (masks, not shapes): one step per method, interleaved.
    first = {}
    for name, (method, _, config) in configs.items():
        first.setdefault(method or "dense", config)
    step_s = train_step_seconds(first)
    tokens = inputs[0].size
    for r in rows:
        r["train_tokens_per_s"] = dense_config.train.batch_size * dense_config.train.seq_len / step_s[r["method"]]
        r["kept_prunable_params"] = int(round((1.0 - r["sparsity"]) * reference))
        r["inference_tokens_per_s"] = tokens / seconds[r["run"]]
    source = pathlib.Path(args.data).resolve()
    setting = {"steps": args.steps, "batch": dense_config.train.batch_size, "seq_len": dense_config.train.seq_len,
               "ramp_steps": dense_config.prune.target_warmup, "agp_start": dense_config.prune.agp_start,
               "agp_frequency": dense_config.prune.agp_frequency, "block": tuple(dense_config.prune.block),
               "vocab": "corpus", "vocab_size": task.corpus.vocab_size, "reference_params": reference,
               "d_model": dense_config.model.d_model, "n_layers": dense_config.model.n_layers,
               "inference_batch": list(np.shape(inputs[0]))}
    write_report(args.results, f"compare_{source.stem}", command_line("compare.py", argv), source.name, setting,
                 rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
