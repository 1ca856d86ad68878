"""The speed suite: reduced models after ``shrink`` against the unpruned ones, in inference and training.

``flaxprune bench`` and ``python experiments/bench.py`` run :func:`run`, then
write its rows through ``experiments/results_files.py``. For each model of
:mod:`flaxprune.benchmark_models` (the SRU LM, Transformer-XL, the BERT
classifier):

* **Inference**, at every ``(batch, seq)`` of the grid: the gated model in
  eval mode (``deterministic=True``, full shapes: the unpruned model), the
  same factors without gates (``ungated``), the dense model, and the model
  :func:`flaxprune.shrink` returns at each sparsity level, its gates set
  without training (:func:`~flaxprune.benchmark_cut_gates`). Per
  variant: latency per call (median, p10-p90, min, max), tokens/s, lower and
  compile time (``jax.jit(f).lower(...).compile()``), parameter bytes, the
  **measured speedup** (the gated model's median / this one's), the
  **theoretical speedup** (:func:`flaxprune.flops.theoretical_speedup` of the
  whole model at that ``seq`` and ``batch``), and their ratio, the
  **efficiency**.
* **Training**, at the model's training shape: the full step (loss,
  gradients, ``flop_optimizer`` update) of the dense, the ungated and the
  gated model (the gated one with the Lagrangian penalty on the expected
  sparsity), its time, tokens/s, and XLA's memory estimate from
  ``compiled.memory_analysis()`` (arguments + outputs + temporaries: buffer
  assignment, not a measured peak; CPUs keep no device memory statistics).

Method: every variant is compiled ahead of time, its inputs made once outside
the timed region; each is called ``warmup`` times, which also sets how many
calls make one sample (at least ``min_seconds``); then the variants are timed
interleaved, ``A B C A B C ...``, ``repeats`` samples each, every call ended
by ``jax.block_until_ready``. Inference donates nothing; the train step
donates its state, as a training loop does.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxprune.benchmark_models import (
    FAMILIES,
    SIZES,
    ModelSpec,
    cut_gates,
    forward_fn,
    init_params,
    inputs_for,
    labels_for,
    model_specs,
    train_step_fn,
)
from flaxprune.benchmark_timing import compile_timed, summarize, time_interleaved
from flaxprune.flops import flops_per_token, param_bytes
from flaxprune.host_memory import is_kept, keep_freed_memory
from flaxprune.lagrangian import flop_optimizer, init_multipliers
from flaxprune.models import BertConfig
from flaxprune.size import hard_sparsity
from flaxprune.surgery import shrink

__all__ = [
    "BenchOptions",
    "QUICK",
    "bench_inference",
    "bench_model",
    "bench_training",
    "compile_timed",
    "environment",
    "parse_flags",
    "run",
    "summarize",
    "time_interleaved",
]

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # --dtype: the computation dtype (params stay float32)
DEFAULT_OUTPUT = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "results")  # the checkout's
BERT_MAX_POSITION = BertConfig.max_position  # the longest --seqs a BERT of the suite accepts
# --quick: small models and a small grid; flags given explicitly still win.
QUICK = {"size": "small", "levels": (0.5, 0.7, 0.9), "batches": (1, 8), "seqs": (128,), "repeats": 3}


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What to run; each field is the ``flaxprune bench`` flag of the same name.

    Attributes:
      models: families, from ``('sru', 'txl', 'bert')``.
      levels: nominal sparsities in (0, 1).
      batches: sequences per call.
      seqs: tokens per sequence.
      repeats: timed samples per variant.
      size: ``'full'``, ``'small'`` (``--quick``) or ``'tiny'`` (tests).
      dtype: computation dtype, ``'float32'`` or ``'bfloat16'``.
      training: time the train steps too.
      isolate: time each model in a fresh Python process (:func:`bench_model` there), so no model's
        timings depend on the heap and caches the models before it left (one process for all: False).
      quick: the run is ``--quick`` (its files are ``bench_<backend>_quick.*``).
      max_tokens: skip inference cases of more than ``batch * seq`` tokens (0: none).
      warmup: untimed calls per variant before the samples.
      min_seconds: one sample is as many calls as take at least this long.
      output: the results folder (default: the checkout's ``experiments/results``).
    """

    models: tuple[str, ...] = FAMILIES
    levels: tuple[float, ...] = (0.5, 0.7, 0.9)
    batches: tuple[int, ...] = (1, 8, 64)
    seqs: tuple[int, ...] = (128, 256)
    repeats: int = 5
    size: str = "full"
    dtype: str = "float32"
    training: bool = True
    isolate: bool = True
    quick: bool = False
    max_tokens: int = 0
    warmup: int = 1
    min_seconds: float = 0.05
    output: str = DEFAULT_OUTPUT

    def __post_init__(self):
        def bad(name: str, value: Any, accepted: str) -> ValueError:
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            return ValueError(f"--{name}={shown} is not accepted; accepted: {accepted}.")

        def sizes(name: str, values: tuple) -> None:
            if not values or not all(_is_int(v) and v >= 1 for v in values):
                raise bad(name, values, "comma-separated integers >= 1, e.g. 1,8,64")

        if not self.models or not set(self.models) <= set(FAMILIES) or len(set(self.models)) < len(self.models):
            raise bad("models", self.models, f"a comma-separated subset of {','.join(FAMILIES)}")
        if not self.levels or not all(_is_real(v) and 0 < v < 1 for v in self.levels):
            raise bad("levels", self.levels, "comma-separated sparsities in (0, 1), e.g. 0.5,0.7,0.9")
        sizes("batches", self.batches)
        sizes("seqs", self.seqs)
        if "bert" in self.models and max(self.seqs) > BERT_MAX_POSITION:
            raise bad("seqs", self.seqs, f"lengths <= {BERT_MAX_POSITION} with bert among --models (max_position)")
        for name, low in (("repeats", 1), ("max_tokens", 0), ("warmup", 1)):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= low):
                raise bad(name, getattr(self, name), f"an integer >= {low}")
        if not (_is_real(self.min_seconds) and self.min_seconds >= 0):
            raise bad("min_seconds", self.min_seconds, "a number >= 0")
        if self.size not in SIZES:
            raise bad("size", self.size, "|".join(SIZES))
        if self.dtype not in DTYPES:
            raise bad("dtype", self.dtype, "|".join(DTYPES))
        if os.path.exists(self.output) and not os.path.isdir(self.output):
            raise bad("output", self.output, "a folder (new or existing), not a file")

    def command(self) -> str:
        """The command line that repeats this run, every setting spelled out."""
        join = lambda values: ",".join(map(str, values))  # noqa: E731
        flags = [
            "--quick" if self.quick else "",
            f"--size={self.size}",
            f"--models={join(self.models)}",
            f"--levels={join(self.levels)}",
            f"--batches={join(self.batches)}",
            f"--seqs={join(self.seqs)}",
            f"--repeats={self.repeats}",
            f"--dtype={self.dtype}",
            "" if self.training else "--notraining",
            "" if self.isolate else "--noisolate",
            f"--max_tokens={self.max_tokens}" if self.max_tokens else "",
            f"--output={self.output}" if self.output != DEFAULT_OUTPUT else "",
        ]
        return "python experiments/bench.py " + " ".join(f for f in flags if f)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)


def parse_flags(flag_values: Mapping[str, Any]) -> BenchOptions:
    """Options from flag values: lists as ``'0.5,0.7'`` strings, None for a flag not given.

    A flag not given takes the ``--quick`` value (:data:`QUICK`) when ``quick`` is set, else the default.

    Raises:
      ValueError: one line naming the flag, the value and what is accepted.
    """
    given = {k: v for k, v in flag_values.items() if v is not None}
    quick = bool(given.get("quick", False))
    values = dict(QUICK) if quick else {}
    for name, parse in (("models", str), ("levels", float), ("batches", int), ("seqs", int)):
        if name in given:
            text = str(given.pop(name))
            try:
                values[name] = tuple(parse(item.strip()) for item in text.split(","))
            except ValueError:
                kind = {"models": "names", "levels": "numbers", "batches": "integers", "seqs": "integers"}[name]
                raise ValueError(f"--{name}={text} is not accepted; accepted: comma-separated {kind}.") from None
    values.update(given)
    unknown = set(values) - {f.name for f in dataclasses.fields(BenchOptions)}
    if unknown:
        raise ValueError(f"parse_flags: unknown option(s) {sorted(unknown)}.")
    return BenchOptions(**values)


def environment(options: BenchOptions) -> dict[str, Any]:
    """Versions, backend, device, CPUs, XLA_FLAGS and load: what the numbers depend on."""
    import flax
    import jaxlib
    import optax

    device = jax.devices()[0]
    return {
        "kind": "environment",
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "keep_freed_memory": is_kept(),
        "dtype": options.dtype,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": options.command(),
    }


# --- the suite --------------------------------------------------------------------


def run(options: BenchOptions, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict:
    """Runs the suite; returns ``{'environment': {...}, 'rows': [one dict per timed variant]}``."""
    env = environment(options)
    log(f"bench: jax {env['jax']} on {env['backend']} ({env['device_kind']}), {env['cpu_count']} CPUs; "
        f"{options.command()}")
    begin = time.perf_counter()
    rows = []
    for family in options.models:
        for index, spec in enumerate(model_specs(family, options.size, DTYPES[options.dtype])):
            if options.isolate:
                rows += _bench_model_in_fresh_process(options, family, index)
            else:
                rows += bench_model(options, family, index, log)
            log(f"bench: {spec.name} done at {time.perf_counter() - begin:.0f} s")
    env["seconds"] = time.perf_counter() - begin
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"environment": env, "rows": rows}


def bench_model(options: BenchOptions, family: str, index: int, log: Callable[[str], None]) -> list[dict]:
    """The rows of one model, ``model_specs(family, options.size)[index]``: inference, then training."""
    spec = model_specs(family, options.size, DTYPES[options.dtype])[index]
    rows = bench_inference(spec, options, log)
    if options.training:
        rows += bench_training(spec, options, log)
    return rows


def _bench_model_in_fresh_process(options: BenchOptions, family: str, index: int) -> list[dict]:
    """:func:`bench_model` in a child ``python -m flaxprune.benchmark`` (its log goes to this stderr)."""
    import json
    import subprocess
    import tempfile

    request = {"options": dataclasses.asdict(options), "family": family, "index": index, "keep": is_kept()}
    with tempfile.TemporaryDirectory(prefix="flaxprune-bench-") as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        done = subprocess.run([sys.executable, "-m", "flaxprune.benchmark", json.dumps(request), str(out)])
        if done.returncode != 0 or not out.is_file():
            raise ChildProcessError(
                f"bench: the process timing {family} model {index} failed (exit {done.returncode}); "
                "its error is above. --noisolate runs every model in this process instead."
            )
        return json.loads(out.read_text(encoding="utf-8"))


def _child_main(argv: list[str]) -> int:
    """``python -m flaxprune.benchmark REQUEST_JSON OUT``: one model's rows, as JSON, to ``OUT``."""
    import json

    request = json.loads(argv[0])
    if request["keep"]:
        keep_freed_memory()  # as the parent process did, before this one's first computation
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in request["options"].items()}
    rows = bench_model(BenchOptions(**fields), request["family"], request["index"],
                       lambda line: print(line, file=sys.stderr, flush=True))
    pathlib.Path(argv[1]).write_text(json.dumps(rows), encoding="utf-8")
    return 0


def _flops(params: Any, config: Any, seq: int, batch: int) -> int:
    return flops_per_token(params, config, seq_len=seq, batch=batch).forward


def _max_abs_diff(a: Any, b: Any) -> float:
    """The largest elementwise difference of two outputs' logits (the first leaf)."""
    x, y = jax.tree.leaves(a)[0], jax.tree.leaves(b)[0]
    return float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))


def bench_inference(spec: ModelSpec, options: BenchOptions, log: Callable[[str], None]) -> list[dict]:
    """Inference rows of one model: every variant at every ``(batch, seq)`` of the grid, timed interleaved."""
    keys = iter(jax.random.split(jax.random.key(0), len(spec.variants)))
    variants = {name: (config, init_params(config, next(keys))) for name, config in spec.variants.items()}
    gated_config, gated_params = variants["gated"]
    pruned, cut = {}, {}
    for level in options.levels:
        name = f"pruned_{level:g}"
        cut[name] = cut_gates(gated_params, level)
        small, small_config = shrink(cut[name], gated_config)
        variants[name] = (small_config, small)
        pruned[name] = (level, float(hard_sparsity(cut[name], gated_config)))
    rows = []
    checked = False
    for batch in options.batches:
        for seq in options.seqs:
            base = {"model": spec.name, "family": spec.family, "description": spec.description, "kind": "inference",
                    "batch": batch, "seq": seq}
            if options.max_tokens and batch * seq > options.max_tokens:
                reason = f"batch x seq > --max_tokens={options.max_tokens}"
                rows.append({**base, "variant": "skipped", "reason": reason})
                continue
            if spec.max_seq is not None and seq > spec.max_seq:
                rows.append({**base, "variant": "skipped", "reason": f"seq > max_position={spec.max_seq}"})
                continue
            inputs = inputs_for(gated_config, batch, seq)
            compiled, info, calls = {}, {}, {}
            for name, (config, params) in variants.items():
                compiled[name], info[name] = compile_timed(forward_fn(config), (params, *inputs))
                calls[name] = lambda c=compiled[name], p=params, x=inputs: c(p, *x)
            if not checked:  # the reduced model computes the gated model's function: check it once per model
                for name in pruned:
                    gated_out = compiled["gated"](cut[name], *inputs)
                    info[name]["max_abs_diff_vs_gated"] = _max_abs_diff(gated_out, calls[name]())
                checked = True
            timings = time_interleaved(calls, repeats=options.repeats, warmup=options.warmup,
                                       min_seconds=options.min_seconds)
            reference = summarize(timings["gated"]["samples"])["median_s"]
            reference_flops = _flops(gated_params, gated_config, seq, batch)
            for name, (config, params) in variants.items():
                stats = summarize(timings[name]["samples"])
                flops = _flops(params, config, seq, batch)
                level, hard = pruned.get(name, (None, None))
                measured, theoretical = reference / stats["median_s"], reference_flops / flops
                rows.append({
                    **base,
                    "variant": name,
                    "nominal_sparsity": level,
                    "hard_sparsity": hard,
                    "tokens_per_s": batch * seq / stats["median_s"],
                    **stats,
                    "samples_s": timings[name]["samples"],
                    "calls_per_sample": timings[name]["number"],
                    "page_faults_per_call": float(np.median(timings[name]["faults"])),
                    **info[name],
                    "param_bytes": param_bytes(params),
                    "flops_per_token": flops / (batch * seq),
                    "measured_speedup": measured,
                    "theoretical_speedup": theoretical,
                    "efficiency": measured / theoretical,
                })
            line = ", ".join(f"{r['variant']} {r['median_s'] * 1e3:.1f} ms" for r in rows[-len(variants):])
            log(f"bench: {spec.name} batch {batch} x {seq}: {line}")
    return rows


TRAIN_VARIANTS = (("dense", False), ("ungated", False), ("gated", True))  # (variant, with the Lagrangian penalty)


def bench_training(spec: ModelSpec, options: BenchOptions, log: Callable[[str], None]) -> list[dict]:
    """Train-step rows of one model: dense, ungated and gated (FLOP's full step), timed interleaved."""
    batch, seq = spec.train_shape
    tx = flop_optimizer(1e-4, gate_learning_rate=1e-2, lambda_learning_rate=1e-2, clip_norm=1.0)
    key = jax.random.key(2)
    states, calls, info = {}, {}, {}
    for name, prune in TRAIN_VARIANTS:
        config = spec.variants[name]
        trainable = {"params": init_params(config, jax.random.key(1)), "lagrangian": init_multipliers()}
        states[name] = [trainable, tx.init(trainable)]
        inputs, labels = inputs_for(config, batch, seq), labels_for(config, batch, seq)
        step = train_step_fn(config, tx, prune=prune)
        compiled, info[name] = compile_timed(step, (*states[name], key, inputs, labels), donate_argnums=(0, 1))
        info[name]["param_bytes"] = param_bytes(trainable["params"])

        def call(name=name, compiled=compiled, inputs=inputs, labels=labels):
            states[name][:] = compiled(*states[name], key, inputs, labels)  # donated: thread the new state
            return states[name]

        calls[name] = call
    timings = time_interleaved(calls, repeats=options.repeats, warmup=options.warmup, min_seconds=options.min_seconds)
    medians = {name: summarize(t["samples"])["median_s"] for name, t in timings.items()}
    rows = []
    for name, prune in TRAIN_VARIANTS:
        stats = summarize(timings[name]["samples"])
        rows.append({
            "model": spec.name,
            "family": spec.family,
            "description": spec.description,
            "kind": "train",
            "variant": name,
            "lagrangian": prune,
            "batch": batch,
            "seq": seq,
            "tokens_per_s": batch * seq / stats["median_s"],
            **stats,
            "samples_s": timings[name]["samples"],
            "calls_per_sample": timings[name]["number"],
            "page_faults_per_call": float(np.median(timings[name]["faults"])),
            **info[name],
            "vs_ungated": stats["median_s"] / medians["ungated"],
            "vs_dense": stats["median_s"] / medians["dense"],
        })
    faults = {name: rows[i]["page_faults_per_call"] for i, (name, _) in enumerate(TRAIN_VARIANTS)}
    log(f"bench: {spec.name} train {batch} x {seq}: "
        + ", ".join(f"{n} {m * 1e3:.0f} ms ({faults[n]:.0f} page faults)" for n, m in medians.items()))
    return rows


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
