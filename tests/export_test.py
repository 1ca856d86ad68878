"""The portable export: a fresh python with only jax and numpy reproduces the reduced Flax models; the folder rule.

Three tiny reduced models (a gated SRU, a Transformer-XL and a BERT classifier, each with some components cut
and then shrunk) are exported once per module; one child process, which imports only jax, numpy and json, runs
every export at two batch sizes and two sequence lengths, as the README's snippet does.
"""

import dataclasses
import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxprune as fp
from flaxprune import cli, export
from flaxprune.models import BertConfig, SRUConfig, TransformerXLConfig, WordSRUConfig, model_for
from flaxprune.training.checkpoint import model_config_from_json, save_reduced


CONFIGS = {
    "sru": SRUConfig(vocab_size=20, d_model=8, n_layers=2, rank=3, dropout=0.0),
    "txl": TransformerXLConfig(vocab_size=20, n_layers=2, n_heads=2, d_model=8, d_head=4, d_inner=16, mem_len=4,
                               rank=3, dropout=0.0),
    "bert": BertConfig(vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                       max_position=12, num_labels=3, factorized=True, gated=True, dropout=0.0),
    "word_sru": WordSRUConfig(vocab_size=20, d_model=8, n_layers=2, rank=3, cutoffs=(5, 12), div_val=2, dropout=0.0),
}
CASES = {  # (batch, time): two of each, and for Transformer-XL segments shorter and longer than its memory
    "sru": [(1, 5), (3, 9)],
    "txl": [(2, 3), (3, 6)],
    "bert": [(2, 5), (3, 12)],
    "word_sru": [(1, 5), (3, 9)],
}


def reduced(kind, seed=0):
    """Init the tiny model, close every third gate (the others far open), shrink: ``(small_params, small_config)``."""
    cfg = CONFIGS[kind]
    model = model_for(cfg)
    ids = jnp.zeros((2, 5), jnp.int32)
    args = (ids, ids, ids) if kind == "bert" else (ids, model.initial_carry(2))
    params = model.init(jax.random.key(seed), *args)["params"]

    def cut(path, x):
        if not path[-1].key.startswith("log_alpha"):  # log_alpha_i of the adaptive embedding's bands too
            return x
        return jnp.where(jnp.arange(x.shape[0]) % 3 == 0, -10.0, 5.0).astype(x.dtype)

    small, small_cfg = fp.shrink(jax.tree_util.tree_map_with_path(cut, params), cfg)
    assert fp.total_params(small) < fp.total_params(params)
    return small, small_cfg


def inputs_for(kind, cfg, b, t):
    """Random inputs in the export's order, as numpy arrays."""
    rng = np.random.default_rng(b * 100 + t)
    ids = rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
    if kind in ("sru", "word_sru"):
        return [ids, rng.normal(size=(b, cfg.n_layers, cfg.d_model)).astype(np.float32)]
    if kind == "txl":
        mems = rng.normal(size=(b, cfg.n_layers, cfg.mem_len, cfg.d_model)).astype(np.float32)
        return [ids, mems, (np.arange(b) % (cfg.mem_len + 1)).astype(np.int32)]
    mask = np.ones((b, t), np.int32)
    mask[0, t - 2 :] = 0  # some padding
    return [ids, (rng.random((b, t)) > 0.5).astype(np.int32), mask]


def flax_outputs(kind, params, cfg, inputs):
    """The reduced Flax model's own outputs, flattened in the export's output order."""
    model = model_for(cfg)
    if kind == "bert":
        return [jax.jit(lambda p, *x: model.apply({"params": p}, *x, deterministic=True))(params, *inputs)]
    names = ["c"] if kind in ("sru", "word_sru") else ["mems", "length"]
    carry = dict(zip(names, inputs[1:]))
    apply = jax.jit(lambda p, x, c: model.apply({"params": p}, x, c, deterministic=True))
    logits, new = apply(params, inputs[0], carry)
    return [logits, *(new[k] for k in names)]


CHILD = """
import json, pathlib, sys
import jax, numpy as np

root = pathlib.Path(sys.argv[1])
for kind in sys.argv[2:]:
    folder = root / kind
    # The README's snippet:
    manifest = json.load(open(folder / "manifest.json"))
    exported = jax.export.deserialize(bytearray(open(folder / "model.jaxexport", "rb").read()))
    with np.load(folder / "weights.npz", allow_pickle=False) as npz:
        weights = [npz[w["name"]].view(jax.numpy.dtype(w["dtype"])) for w in manifest["weights"]]
    outputs = {}
    with np.load(root / f"{kind}_inputs.npz", allow_pickle=False) as cases:
        for case in sorted({key.split(":")[0] for key in cases.files}):
            inputs = [cases[f"{case}:{x['name']}"] for x in manifest["inputs"]]
            for spec, value in zip(manifest["outputs"], exported.call(*weights, *inputs)):
                outputs[f"{case}:{spec['name']}"] = np.asarray(value)
    np.savez(root / f"{kind}_outputs.npz", **outputs)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("flaxprune", "flax"))
assert not loaded, loaded
print("child ok", jax.__version__)
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``{kind: (small_params, small_config, manifest)}``, exported under one root with each kind's inputs."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for kind in CONFIGS:
        small, small_cfg = reduced(kind)
        manifest = export.export_model(small, small_cfg, root / kind)
        cases = {}
        for b, t in CASES[kind]:
            for spec, value in zip(manifest["inputs"], inputs_for(kind, small_cfg, b, t)):
                cases[f"b{b}_t{t}:{spec['name']}"] = value
        np.savez(root / f"{kind}_inputs.npz", **cases)
        out[kind] = (small, small_cfg, manifest)
    return root, out


@pytest.fixture(scope="module")
def child_outputs(exports):
    root, _ = exports
    (root / "child.py").write_text(CHILD)
    done = subprocess.run([sys.executable, str(root / "child.py"), str(root), *CONFIGS], capture_output=True,
                          text=True, timeout=300, check=False, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "child ok" in done.stdout
    return root


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_a_fresh_python_with_only_jax_and_numpy_gives_the_reduced_models_outputs(kind, exports, child_outputs):
    root, models = exports
    small, small_cfg, manifest = models[kind]
    with np.load(root / f"{kind}_inputs.npz") as cases, np.load(child_outputs / f"{kind}_outputs.npz") as got:
        for b, t in CASES[kind]:
            inputs = [cases[f"b{b}_t{t}:{x['name']}"] for x in manifest["inputs"]]
            want = flax_outputs(kind, small, small_cfg, inputs)
            for spec, expected in zip(manifest["outputs"], want):
                value = got[f"b{b}_t{t}:{spec['name']}"]
                assert value.shape == expected.shape and value.dtype == expected.dtype, spec
                np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-6, err_msg=f"{kind} {b}x{t} {spec}")


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_load_exported_matches_the_child_and_checks_shapes(kind, exports, child_outputs):
    root, models = exports
    _, small_cfg, manifest = models[kind]
    f = export.load_exported(root / kind)
    assert f.manifest == manifest
    (b, t), *_ = CASES[kind]
    with np.load(root / f"{kind}_inputs.npz") as cases, np.load(child_outputs / f"{kind}_outputs.npz") as got:
        outputs = f(*[cases[f"b{b}_t{t}:{x['name']}"] for x in manifest["inputs"]])
        for spec, value in zip(manifest["outputs"], outputs):
            np.testing.assert_array_equal(np.asarray(value), got[f"b{b}_t{t}:{spec['name']}"])
    bad = inputs_for(kind, small_cfg, 2, 4)
    with pytest.raises(ValueError, match=f"input {manifest['inputs'][1]['name']} has shape"):
        f(bad[0], *inputs_for(kind, small_cfg, 3, 4)[1:])  # batch 2 tokens, batch 3 for the rest
    if kind == "bert":
        with pytest.raises(ValueError, match=r"t = 13 breaks the constraint t <= 12"):
            f(*inputs_for(kind, small_cfg, 2, 13))


def test_the_manifest_describes_the_export(exports):
    root, models = exports
    for kind, (small, small_cfg, manifest) in models.items():
        assert manifest == json.loads((root / kind / "manifest.json").read_text())
        assert (manifest["format"], manifest["format_version"]) == (export.FORMAT, export.FORMAT_VERSION)
        assert manifest["jax_version"] == jax.__version__ and manifest["flaxprune_version"] == fp.__version__
        assert manifest["model"] == kind and manifest["platforms"] == ["cpu", "cuda", "tpu"]
        assert manifest["dropped_platforms"] == {} and manifest["sparsity"] is None
        assert model_config_from_json(json.dumps(manifest["model_config"])) == small_cfg  # config round trip
        assert manifest["total_params"] == fp.total_params(small)
        rows = [dataclasses.asdict(r) for r in fp.report(small, small_cfg)]
        assert manifest["layers"] == json.loads(json.dumps(rows))
        leaves = jax.tree_util.tree_leaves_with_path(small)  # the weights in the exported function's argument order
        assert [w["name"] for w in manifest["weights"]] == [jax.tree_util.keystr(p, simple=True, separator="/")
                                                            for p, _ in leaves]
        with np.load(root / kind / "weights.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == sorted(w["name"] for w in manifest["weights"])
            for w, (_, leaf) in zip(manifest["weights"], leaves):
                np.testing.assert_array_equal(npz[w["name"]], leaf)
                assert w["shape"] == list(leaf.shape) and w["dtype"] == "float32"
        assert set(manifest["symbolic_dims"]) == {"b", "t"}
        exported = jax.export.deserialize(bytearray((root / kind / "model.jaxexport").read_bytes()))
        assert len(exported.in_avals) == len(leaves) + len(manifest["inputs"])  # the weights are arguments
    sru, txl, bert = (models[k][2] for k in ("sru", "txl", "bert"))
    assert [x["shape"] for x in sru["inputs"]] == [["b", "t"], ["b", 2, 8]]
    assert [x["name"] for x in sru["outputs"]] == ["logits", "carry/c"] and sru["outputs"][0]["shape"] == ["b", "t", 20]
    assert [x["shape"] for x in txl["inputs"]] == [["b", "t"], ["b", 2, 4, 8], ["b"]]
    assert "mem_len = 4 is fixed" in txl["symbolic_dims"]["t"]
    assert [x["name"] for x in bert["inputs"]] == ["input_ids", "token_type_ids", "attention_mask"]
    assert bert["constraints"] == ["t <= 12"] and bert["outputs"][0]["shape"] == ["b", 3]


def test_the_weights_are_arguments_not_constants(exports):
    root, models = exports
    other, other_cfg = reduced("sru", seed=1)  # the same shapes, other values
    assert other_cfg == models["sru"][1]
    exported = jax.export.deserialize(bytearray((root / "sru" / "model.jaxexport").read_bytes()))
    inputs = inputs_for("sru", other_cfg, 2, 6)
    got = exported.call(*jax.tree.leaves(other), *inputs)
    for value, want in zip(got, flax_outputs("sru", other, other_cfg, inputs)):
        np.testing.assert_allclose(np.asarray(value), want, rtol=1e-6, atol=1e-6)


# --- The output folder: new, empty, or an earlier export with overwrite ------------------------------------


def tree(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sru_small():
    return reduced("sru")


def test_overwrite_replaces_only_an_export_of_ours(sru_small, tmp_path):
    small, cfg = sru_small
    out = tmp_path / "out"
    (out).mkdir()  # an empty folder is fine
    export.export_model(small, cfg, out, platforms=("cpu",))
    assert sorted(p.name for p in out.iterdir()) == sorted(export.FILES) and export.is_export(out)
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match="already holds an export: nothing was written"):
        export.export_model(small, cfg, out, platforms=("cpu",))
    assert tree(tmp_path) == before
    other, _ = reduced("sru", seed=1)
    export.export_model(other, cfg, out, overwrite=True, platforms=("cpu",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left beside it
    assert tree(out)["weights.npz"] != before["out/weights.npz"]
    (out / "notes.txt").write_text("mine")  # an export with a file we did not write is no longer ours
    with pytest.raises(FileExistsError, match="is not a flaxprune export"):
        export.export_model(small, cfg, out, overwrite=True, platforms=("cpu",))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_leftover_staging_folder_of_ours_is_replaced_a_foreign_one_is_not(sru_small, tmp_path):
    small, cfg = sru_small
    staging = tmp_path / "out.export-new"
    staging.mkdir()
    (staging / "weights.npz").write_bytes(b"half written")
    export.export_model(small, cfg, tmp_path / "out", platforms=("cpu",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    staging.mkdir()
    (staging / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match="is in the way"):
        export.export_model(small, cfg, tmp_path / "out", overwrite=True, platforms=("cpu",))
    assert (staging / "thesis.tex").read_text() == "mine" and export.is_export(tmp_path / "out")


def test_outputs_that_are_not_ours_are_refused_even_with_overwrite(sru_small, tmp_path):
    small, cfg = sru_small
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("1,2")
    save_reduced(tmp_path / "reduced", small, cfg)
    before = tree(tmp_path)
    for name, message in (("file", "is a file"), ("other", "data.csv"), ("reduced", "is not a flaxprune export")):
        with pytest.raises(FileExistsError, match=message):
            export.export_model(small, cfg, tmp_path / name, overwrite=True)
    assert tree(tmp_path) == before


def test_bad_platforms_and_a_missing_flatbuffers_are_errors_before_writing(sru_small, tmp_path, monkeypatch):
    small, cfg = sru_small
    with pytest.raises(ValueError, match=r"platforms=\['cpu', 'gpu'\] must be some of"):
        export.export_model(small, cfg, tmp_path / "out", platforms=("cpu", "gpu"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flatbuffers" else find_spec(n, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install flatbuffers"):
        export.export_model(small, cfg, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_platform_that_does_not_lower_is_dropped_and_named(sru_small, tmp_path, monkeypatch):
    small, cfg = sru_small
    real = jax.export.export

    def export_but_not_tpu(fun, *, platforms=None, **kwargs):
        if "tpu" in platforms:
            raise NotImplementedError("no TPU lowering rule for this op")
        return real(fun, platforms=platforms, **kwargs)

    monkeypatch.setattr(jax.export, "export", export_but_not_tpu)
    manifest = export.export_model(small, cfg, tmp_path / "out")
    assert manifest["platforms"] == ["cpu", "cuda"]
    assert manifest["dropped_platforms"] == {"tpu": "NotImplementedError: no TPU lowering rule for this op"}


def test_params_that_do_not_fit_the_config_are_one_error(sru_small, tmp_path):
    small, _ = sru_small
    with pytest.raises(ValueError, match="cannot trace the TransformerXLConfig with these params"):
        export.export_model(small, CONFIGS["txl"], tmp_path / "out", platforms=("cpu",))
    assert list(tmp_path.iterdir()) == []


# --- flaxprune export on a trained run ----------------------------------------------------------------------


@pytest.mark.e2e
def test_flaxprune_export_of_a_tiny_run(tmp_path, data_dir, capsys):
    from tiny_runs import tiny_lm_config

    from flaxprune.training import loop
    from flaxprune.training.checkpoint import load_reduced

    run = tmp_path / "run"
    summary = loop.train(tiny_lm_config(**{"data.data_dir": data_dir}), run, log=lambda _: None, progress=False)
    capsys.readouterr()
    out = tmp_path / "export"
    assert cli.main(["export", f"--workdir={run}", f"--output={out}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"exported {run / 'reduced'} to {out}"
    assert lines[1].startswith(f"SRULanguageModel: {summary['reduced_params']:,} params, inputs tokens[b,t]")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sparsity"]["hard_sparsity"] == summary["hard_sparsity"] > 0
    model, params, config = load_reduced(run / "reduced")
    inputs = inputs_for("sru", config, 2, 7)
    for got, want in zip(export.load_exported(out)(*inputs), flax_outputs("sru", params, config, inputs)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)

    before = tree(out)
    assert cli.main(["export", f"--workdir={run}", f"--output={out}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flaxprune export: output ") and "already holds an export" in err and err.count("\n") == 1
    assert tree(out) == before
    assert cli.main(["export", f"--checkpoint={run / 'reduced'}", f"--output={out}", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["sparsity"] is None  # a bare reduced model: unknown
    assert cli.main(["export", f"--checkpoint={run}", f"--output={tmp_path / 'second'}"]) == 0  # a run, as report
    assert cli.main(["export", f"--workdir={run / 'reduced'}", f"--output={tmp_path / 'third'}"]) == 1
    assert "is not a flaxprune run directory" in capsys.readouterr().err
    assert not (tmp_path / "third").exists()
