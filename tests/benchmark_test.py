"""The speed suite: its harness, its flags, the pruned models it builds, and a whole run at tiny sizes.

Nothing here asserts on a timing: the clock of the harness test is fake, and
the end-to-end runs check only the files, the columns and the arithmetic
between them.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import flaxprune as fp
from flaxprune import benchmark, benchmark_models, benchmark_report
from flaxprune.flops import param_bytes, theoretical_speedup

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))  # as when the scripts run
from results_files import NOTES  # noqa: E402

TINY = dict(size="tiny", levels=(0.5, 0.9), batches=(2,), seqs=(16,), repeats=2, min_seconds=0.0)


# --- the harness ------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Output:
    """What a fake callable returns: records when the harness waits for it."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def block_until_ready(self):
        self.log.append(f"{self.name} ready")
        return self


def test_variants_are_timed_interleaved_and_every_call_is_waited_for():
    clock, log = FakeClock(), []
    costs = {"A": 0.25, "B": 0.5}  # exact in binary, so the calls per sample are exact

    def fake(name):
        def call():
            log.append(name)
            clock.now += costs[name]
            return {"logits": Output(log, name)}

        return call

    timings = benchmark.time_interleaved(
        {"A": fake("A"), "B": fake("B")}, repeats=3, warmup=1, min_seconds=1.0, clock=clock
    )
    calls = [entry for entry in log if not entry.endswith("ready")]
    # one warm-up each, then A B A B A B with 4 calls of A (0.25 s) and 2 of B (0.5 s) per sample
    assert calls == ["A", "B"] + (["A"] * 4 + ["B"] * 2) * 3
    assert all(log[i + 1] == f"{name} ready" for i, name in enumerate(log) if not name.endswith("ready"))
    assert {n: (t["samples"], t["number"]) for n, t in timings.items()} == {"A": ([0.25] * 3, 4), "B": ([0.5] * 3, 2)}
    assert all(len(t["faults"]) == 3 and min(t["faults"]) >= 0 for t in timings.values())


def test_page_faults_per_call_count_fresh_memory():
    # 64 MB of fresh memory per call: glibc maps it anew each time and the kernel faults in its 16k pages of
    # 4 KiB as the bytes are written (bytes, not numpy: numpy asks for transparent huge pages, 2 MiB a fault).
    # In a fresh process: a test worker that ran the CLI has kept freed memory (flaxprune.host_memory).
    probe = (
        "import json; from flaxprune import benchmark\n"
        "t = benchmark.time_interleaved({'fresh': lambda: b'\\x01' * (64 * 2**20), 'none': lambda: 0},"
        " repeats=3, warmup=1)\n"
        "print(json.dumps({k: v['faults'] for k, v in t.items()}))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    faults = json.loads(out.stdout.strip().splitlines()[-1])
    assert min(faults["fresh"]) > 0.9 * 64 * 2**20 / 4096, faults["fresh"]
    assert max(faults["none"]) < 100, faults["none"]


def test_without_min_seconds_a_sample_is_one_call():
    clock, order = FakeClock(), []
    calls = {name: (lambda name=name: order.append(name)) for name in "ABC"}
    timings = benchmark.time_interleaved(calls, repeats=2, warmup=2, clock=clock)
    assert order == list("AABBCC") + list("ABCABC")
    assert {t["number"] for t in timings.values()} == {1}


def test_summarize_hand_computed():
    stats = benchmark.summarize([float(x) for x in range(1, 11)])  # numpy's linear percentiles
    assert stats == pytest.approx({"median_s": 5.5, "p10_s": 1.9, "p90_s": 9.1, "min_s": 1.0, "max_s": 10.0})


# --- flags ------------------------------------------------------------------------


def test_quick_fills_what_is_not_given_and_explicit_flags_win():
    quick = benchmark.parse_flags({"quick": True, "levels": None, "seqs": "64"})
    assert (quick.size, quick.batches, quick.levels, quick.seqs, quick.repeats) == ("small", (1, 8), (0.5, 0.7, 0.9),
                                                                                     (64,), 3)
    full = benchmark.parse_flags({"models": "bert,sru", "levels": "0.7"})
    assert (full.size, full.models, full.levels, full.batches, full.seqs) == ("full", ("bert", "sru"), (0.7,),
                                                                              (1, 8, 64), (128, 256))
    assert "--models=bert,sru --levels=0.7 --batches=1,8,64" in full.command()


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"levels": "0.5,1.2"}, "--levels=0.5,1.2 is not accepted; accepted: comma-separated sparsities in (0, 1)"),
        ({"levels": "half"}, "--levels=half is not accepted; accepted: comma-separated numbers"),
        ({"levels": ""}, "--levels= is not accepted"),
        ({"models": "sru,gpt"}, "--models=sru,gpt is not accepted; accepted: a comma-separated subset of sru,txl,bert"),
        ({"models": "sru,sru"}, "--models=sru,sru is not accepted"),
        ({"batches": "8,0"}, "--batches=8,0 is not accepted; accepted: comma-separated integers >= 1"),
        ({"seqs": "1.5"}, "--seqs=1.5 is not accepted; accepted: comma-separated integers"),
        ({"seqs": "128,1024"}, "--seqs=128,1024 is not accepted; accepted: lengths <= 512 with bert"),
        ({"repeats": 0}, "--repeats=0 is not accepted; accepted: an integer >= 1"),
        ({"max_tokens": -1}, "--max_tokens=-1 is not accepted; accepted: an integer >= 0"),
        ({"size": "huge"}, "--size=huge is not accepted; accepted: full|small|tiny"),
        ({"dtype": "float16"}, "--dtype=float16 is not accepted; accepted: float32|bfloat16"),
    ],
)
def test_bad_flags_are_one_line_naming_flag_value_and_what_is_accepted(flags, message):
    with pytest.raises(ValueError) as error:
        benchmark.parse_flags(flags)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="--output=.*/f is not accepted; accepted: a folder"):
        benchmark.parse_flags({"output": str(tmp_path / "f")})


# --- the pruned models ------------------------------------------------------------


@pytest.mark.parametrize("family", benchmark_models.FAMILIES)
def test_cut_gates_reach_the_nominal_sparsity_in_every_gated_layer(family):
    (spec,) = benchmark_models.model_specs(family, "tiny")
    params = benchmark_models.init_params(spec.gated, jax.random.key(0))
    groups = fp.gate_groups(params)
    if family == "sru":  # the input-gated first layer is cut too
        assert any(path == "layers_0/W" for path, _ in groups)
    for level in (0.5, 0.7, 0.9):
        cut = benchmark_models.cut_gates(params, level)
        kept = {path: max(1, round((1 - level) * g.log_alpha.shape[-1])) for path, g in groups}
        for path, g in fp.gate_groups(cut):  # each layer keeps exactly its share, the first ones
            la = np.asarray(g.log_alpha)
            assert (la[: kept[path]] > 0).all() and (la[kept[path]:] < 0).all(), path
        weights = sum(g.log_alpha.shape[-1] * g.cost_per_gate for _, g in groups)
        expected = 1 - sum(kept[path] * g.cost_per_gate for path, g in groups) / weights
        hard = float(fp.hard_sparsity(cut, spec.gated))
        assert hard == pytest.approx(expected, abs=1e-6) and abs(hard - level) < 0.03, (level, hard)
        small, small_config = fp.shrink(cut, spec.gated)
        assert fp.total_params(small) < fp.total_params(params)
        assert not fp.gate_groups(small)  # every gate was cut or folded away
        if level == 0.7:  # the reduced model computes the gated model's function (eval mode)
            inputs = benchmark_models.inputs_for(spec.gated, 2, 8)
            ours = jax.jit(benchmark_models.forward_fn(small_config))(small, *inputs)
            theirs = jax.jit(benchmark_models.forward_fn(spec.gated))(cut, *inputs)
            np.testing.assert_allclose(jax.tree.leaves(ours)[0], jax.tree.leaves(theirs)[0], atol=1e-4)


def test_the_dense_variant_has_plain_kernels_where_the_gated_one_has_factors():
    (spec,) = benchmark_models.model_specs("sru", "tiny")
    dense = benchmark_models.init_params(spec.variants["dense"], jax.random.key(0))
    assert set(dense["layers_1"]["W"]) == {"kernel"} and set(dense["layers_0"]["W"]) == {"kernel"}
    ungated = benchmark_models.init_params(spec.variants["ungated"], jax.random.key(0))
    assert set(ungated["layers_1"]["W"]) == {"P", "Q"}


# --- the whole suite at tiny sizes --------------------------------------------------


@pytest.fixture(scope="module")
def inference_run():
    options = benchmark.BenchOptions(**TINY, training=False)
    return benchmark.run(options, log=lambda line: None)


@pytest.fixture(scope="module")
def training_run():
    options = benchmark.BenchOptions(**{**TINY, "levels": (0.5,)}, models=("sru",), training=True, isolate=False)
    return benchmark.run(options, log=lambda line: None)


INFERENCE_COLUMNS = (
    "model", "variant", "batch", "seq", "nominal_sparsity", "hard_sparsity", "tokens_per_s", "median_s", "p10_s",
    "p90_s", "min_s", "max_s", "samples_s", "calls_per_sample", "lower_s", "compile_s", "memory", "param_bytes",
    "flops_per_token", "measured_speedup", "theoretical_speedup", "efficiency",
)


@pytest.mark.e2e
def test_every_inference_row_has_every_column_and_efficiency_is_measured_over_theoretical(inference_run):
    rows = inference_run["rows"]
    variants = ["gated", "ungated", "dense", "pruned_0.5", "pruned_0.9"]
    for spec in ("sru_tiny", "txl_tiny", "bert_tiny"):
        assert [r["variant"] for r in rows if r["model"] == spec] == variants
    for r in rows:
        assert set(INFERENCE_COLUMNS) <= set(r), set(INFERENCE_COLUMNS) - set(r)
        assert len(r["samples_s"]) == 2 and r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["efficiency"] == pytest.approx(r["measured_speedup"] / r["theoretical_speedup"])
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["seq"] / r["median_s"])
        gated = next(g for g in rows if g["model"] == r["model"] and g["variant"] == "gated")
        assert r["measured_speedup"] == pytest.approx(gated["median_s"] / r["median_s"])
        assert r["memory"]["total"] == r["memory"]["argument"] + r["memory"]["output"] + r["memory"]["temp"]
        if r["variant"].startswith("pruned"):
            assert abs(r["hard_sparsity"] - r["nominal_sparsity"]) < 0.03
            assert r["max_abs_diff_vs_gated"] < 1e-4  # the reduced model is the gated one, smaller
            assert r["theoretical_speedup"] > 1 and r["param_bytes"] < gated["param_bytes"]
    assert {r["measured_speedup"] for r in rows if r["variant"] == "gated"} == {1.0}


@pytest.mark.e2e
def test_the_theoretical_speedup_is_flops_of_the_whole_model(inference_run):
    (spec,) = benchmark_models.model_specs("bert", "tiny")
    params = benchmark_models.init_params(spec.gated, jax.random.key(0))
    small, small_config = fp.shrink(benchmark_models.cut_gates(params, 0.9), spec.gated)
    row = benchmark_report.rows_of(inference_run, model="bert_tiny", variant="pruned_0.9")[0]
    expected = theoretical_speedup(params, spec.gated, small, small_config, seq_len=16, batch=2)
    assert row["theoretical_speedup"] == pytest.approx(expected)
    assert row["param_bytes"] == param_bytes(small)


@pytest.mark.e2e
def test_training_rows_compare_dense_ungated_and_gated(training_run):
    rows = [r for r in training_run["rows"] if r["kind"] == "train"]
    assert [(r["variant"], r["lagrangian"]) for r in rows] == [("dense", False), ("ungated", False), ("gated", True)]
    by = {r["variant"]: r for r in rows}
    assert by["ungated"]["vs_ungated"] == 1.0 and by["dense"]["vs_dense"] == 1.0
    assert by["gated"]["vs_ungated"] == pytest.approx(by["gated"]["median_s"] / by["ungated"]["median_s"])
    for r in rows:
        assert (r["batch"], r["seq"]) == (2, 16)
        assert r["tokens_per_s"] == pytest.approx(32 / r["median_s"])
        m = r["memory"]
        assert m["total"] == m["argument"] + m["output"] + m["temp"] > 0


@pytest.mark.e2e
def test_results_files_hold_every_number_and_keep_the_notes(inference_run, training_run, tmp_path):
    result = {"environment": inference_run["environment"], "rows": inference_run["rows"] + training_run["rows"]}
    md = benchmark_report.write(result, str(tmp_path), quick=True)
    assert md == tmp_path / "bench_cpu_quick.md"
    saved = json.loads((tmp_path / "bench_cpu_quick.json").read_text())
    env, *rows = saved["rows"]
    assert env["kind"] == "environment" and saved["command"] == env["command"]
    for key in ("jax", "backend", "device_kind", "cpu_count", "xla_flags", "dtype"):
        assert key in env
    assert len(rows) == len(result["rows"]) and all(math.isfinite(r.get("median_s", 0.0)) for r in rows)
    text = md.read_text()
    for header in ("## Summary", "## sru_tiny: SRU 2 x 32", "## txl_tiny", "## bert_tiny", "Training, batch 2 x 16"):
        assert header in text
    for column in ("tokens/s", "latency ms, median (p10-p90)", "compile s", "params MB", "measured", "theoretical",
                   "efficiency", "step ms", "XLA memory MB", "vs ungated", "train step gated / ungated"):
        assert column in text
    md.write_text(text + f"\n{NOTES}\n\n## Notes\n\nby hand\n")
    benchmark_report.write(result, str(tmp_path), quick=True)
    assert md.read_text().endswith(f"{NOTES}\n\n## Notes\n\nby hand\n")
    assert md.read_text().startswith("# Speed of the reduced models (cpu)")
