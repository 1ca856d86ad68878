"""The HF-style export of a reduced BERT: exact round trips, a numpy-only forward, the folder rules, damage named.

One tiny gated BERT classifier (hidden 8, 2 layers, FFN 16, 3 labels) is shrunk with its gates set so that
every projection kind appears: merged ``dense`` attention projections (5 of 8 components kept), ``factored``
feed-forward ones and one ``factored`` query (2 kept), and one ``bias_only`` intermediate (all cut).
"""

import dataclasses
import json
import subprocess
import sys
import textwrap

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import flaxprune as fp
from flaxprune import hf_export as hf
from flaxprune import hf_format
from flaxprune.models import BertClassifier, BertConfig
from flaxprune.models.bert_checkpoint import load_hf_bert, with_classifier
from flaxprune.serialization import config_to_json
from flaxprune.training.checkpoint import CheckpointStore, save_reduced
from tiny_runs import HF_CONFIG, tiny_glue_config, torch_tensors, write_folder, write_tiny_glue

CONFIG = BertConfig(vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                    max_position=12, num_labels=3, factorized=True, gated=True, dropout=0.0)
LABELS = ("contradiction", "entailment", "neutral")


def random_params(cfg, seed=0):
    """Seeded numpy values of the model's shapes (eager ``init`` of even this tiny BERT takes seconds)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(BertClassifier(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    # Vectors of the hidden width (LayerNorm scales, biases) around 1, the rest around 0.
    return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape) + (s.shape == (8,))).astype(s.dtype), shapes)


def gated_params(seed=0):
    params = random_params(CONFIG, seed)

    def gates(path, x):
        name = "/".join(p.key for p in path)
        if not name.endswith("log_alpha"):
            return x
        keep = jnp.arange(x.shape[0]) % 3 != 0  # 5 of 8 kept: attention merges, the FFN stays factored
        if "layer_0/attention/query" in name:
            keep = jnp.arange(x.shape[0]) < 2  # 2 kept: factored
        if "layer_1/intermediate" in name:
            keep = jnp.zeros(x.shape, bool)  # all cut: bias only
        return jnp.where(keep, 5.0, -10.0).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(gates, params)


@pytest.fixture(scope="module")
def reduced():
    return fp.shrink(gated_params(), CONFIG)


@pytest.fixture(scope="module")
def exported(reduced, tmp_path_factory):
    small, small_cfg = reduced
    folder = tmp_path_factory.mktemp("hf") / "model"
    return folder, hf.export_hf(small, small_cfg, folder, source="test", labels=LABELS)


def inputs(b=3, t=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 20, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[0, t - 3:] = 0  # some padding
    return ids, (rng.random((b, t)) > 0.5).astype(np.int32), mask


def logits(params, cfg, x):
    return np.asarray(jax.jit(lambda p, *a: BertClassifier(cfg).apply({"params": p}, *a))(params, *x))


def flat(params):
    return flax.traverse_util.flatten_dict(jax.device_get(params))


# --- Round trips ---------------------------------------------------------------------------------


def test_load_hf_gives_identical_params_and_logits(reduced, exported):
    small, small_cfg = reduced
    config, params = hf.load_hf(exported[0])
    want, got = flat(small), flat(params)
    assert sorted(got) == sorted(want)
    for path, value in want.items():
        assert got[path].dtype == value.dtype, path
        np.testing.assert_array_equal(got[path], value, err_msg=str(path))
    assert not config.gated and config.factorized
    assert {k: (s.rank, s.merged) for k, s in config.plan.layers} == {
        k: (s.rank, s.merged) for k, s in small_cfg.plan.layers}
    x = inputs()
    np.testing.assert_array_equal(logits(params, config, x), logits(small, small_cfg, x))


def test_every_kind_appears_and_config_json_ranks_equal_the_reduced_shapes(reduced, exported):
    small, small_cfg = reduced
    folder, written = exported
    assert json.loads((folder / "config.json").read_text()) == written
    block = written["flaxprune"]
    kinds = {e["kind"] for layer in block["layers"] for e in layer.values()}
    assert kinds == {"dense", "factored", "bias_only"} and block["transformers_compatible"] is False
    tensors = load_file(str(folder / "model.safetensors"))
    for i, layer in enumerate(block["layers"]):
        for proj, e in layer.items():
            node = small["bert"]["encoder"][f"layer_{i}"]
            for key in hf.PROJECTIONS[proj]:
                node = node[key]
            name = f"bert.encoder.layer.{i}.{proj}"
            spec = small_cfg.plan.spec(("bert", "encoder", f"layer_{i}", *hf.PROJECTIONS[proj]))
            assert e["rank"] == spec.rank and (e["in"], e["out"]) == ((16, 8) if proj == "output.dense" else
                                                                      (8, 16) if "intermediate" in proj else (8, 8))
            if e["kind"] == "factored":
                assert node["P"].shape == (e["in"], e["rank"]) and node["Q"].shape == (e["rank"], e["out"])
                assert tensors[f"{name}.weight_in"].shape == (e["rank"], e["in"])
                np.testing.assert_array_equal(tensors[f"{name}.weight_out"] @ tensors[f"{name}.weight_in"],
                                              (np.asarray(node["P"]) @ np.asarray(node["Q"])).T)
            elif e["kind"] == "dense":
                assert spec.merged and tensors[f"{name}.weight"].shape == (e["out"], e["in"])
                np.testing.assert_array_equal(tensors[f"{name}.weight"], np.asarray(node["kernel"]).T)
            else:
                assert set(node) == {"bias"} and e["rank"] == 0 and f"{name}.weight" not in tensors
            np.testing.assert_array_equal(tensors[f"{name}.bias"], node["bias"])
    assert block["layers"][0]["attention.self.query"] == {"kind": "factored", "rank": 2, "in": 8, "out": 8}
    assert block["layers"][0]["attention.self.key"]["kind"] == "dense"
    assert block["layers"][1]["intermediate.dense"]["kind"] == "bias_only"
    assert block["total_params"] == fp.total_params(small) == sum(v.size for v in tensors.values())
    assert block["versions"]["flaxprune"] == fp.__version__ and block["versions"]["jax"] == jax.__version__
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "vocab_size", "layer_norm_eps"):
        assert written[key] == HF_CONFIG[key], key
    assert written["num_labels"] == 3 and written["id2label"] == {"0": "contradiction", "1": "entailment",
                                                                  "2": "neutral"}
    assert written["architectures"] == ["BertForSequenceClassification"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "hf.load_hf" in (folder / "README.md").read_text()


def test_a_dense_model_is_a_plain_hf_checkpoint(tmp_path):
    # An HF BertModel folder, read as flaxprune reads pretrained checkpoints, then exported: the same tensors.
    cfg, encoder = load_hf_bert(write_folder(tmp_path / "pretrained"), num_labels=2, dropout=0.0)
    params = with_classifier(encoder, cfg, jax.random.key(1))
    written = hf.export_hf(params, cfg, tmp_path / "out")
    assert written["flaxprune"]["transformers_compatible"] and not written["flaxprune"]["factorized"]
    tensors = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name, value in torch_tensors().items():
        if not name.endswith("position_ids"):
            np.testing.assert_array_equal(tensors[f"bert.{name}"], value, err_msg=name)
    assert sorted(tensors) == sorted(["classifier.weight", "classifier.bias"] + [
        f"bert.{k}" for k in torch_tensors() if not k.endswith("position_ids")])
    config, loaded = hf.load_hf(tmp_path / "out")
    assert config == dataclasses.replace(cfg, param_dtype=np.dtype("float32"))
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
    _, again = load_hf_bert(tmp_path / "out")  # flaxprune's pretrained-BERT reader takes it as is
    jax.tree.map(np.testing.assert_array_equal, again, jax.device_get(params["bert"]))


def test_half_precision_params_come_back_in_their_dtype(tmp_path):
    pretrained = write_folder(tmp_path / "pretrained")
    for dtype in ("bfloat16", "float16"):
        cfg, encoder = load_hf_bert(pretrained, num_labels=2, param_dtype=jnp.dtype(dtype))
        params = flat(with_classifier(encoder, cfg, jax.random.key(0)))
        written = hf.export_hf(flax.traverse_util.unflatten_dict(params), cfg, tmp_path / dtype)
        assert written["flaxprune"]["param_dtype"] == dtype  # safetensors' numpy reader lacks bfloat16: float32 on disk
        assert written["torch_dtype"] == {"bfloat16": "float32"}.get(dtype, dtype)
        config, loaded = hf.load_hf(tmp_path / dtype)
        assert jnp.dtype(config.param_dtype) == jnp.dtype(dtype)
        loaded = flat(loaded)
        for path, value in params.items():
            assert loaded[path].dtype == value.dtype == jnp.dtype(dtype), path
            np.testing.assert_array_equal(np.asarray(loaded[path], np.float32), np.asarray(value, np.float32))


# --- numpy alone ---------------------------------------------------------------------------------

CHILD = """
import sys
import numpy as np
exec(open(sys.argv[1]).read())
with np.load(sys.argv[3]) as x:
    out = bert_logits(sys.argv[2], x["ids"], x["types"], x["mask"])
np.save(sys.argv[4], out)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "flaxprune", "torch"))
assert not loaded, loaded
print("child ok")
"""


def test_the_numpy_snippet_alone_gives_the_flax_logits(reduced, exported, tmp_path):
    small, small_cfg = reduced
    folder = exported[0]
    assert textwrap.indent(hf_format.NUMPY_FORWARD, "    ") in hf_format.__doc__  # the docstring shows what runs
    assert hf.NUMPY_FORWARD.rstrip() in (folder / "README.md").read_text()
    (tmp_path / "snippet.py").write_text(hf.NUMPY_FORWARD)
    (tmp_path / "child.py").write_text(CHILD)
    x = inputs(b=2, t=12, seed=3)
    np.savez(tmp_path / "x.npz", ids=x[0], types=x[1], mask=x[2])
    done = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "snippet.py"), str(folder),
                           str(tmp_path / "x.npz"), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 0 and "child ok" in done.stdout, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npy")
    want = logits(small, small_cfg, x)
    assert got.shape == want.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- The folder rules ----------------------------------------------------------------------------


def test_refuses_foreign_files_and_replaces_only_its_own_export(reduced, tmp_path):
    small, small_cfg = reduced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not empty \(notes.txt\) and is not a flaxprune HF export"):
        hf.export_hf(small, small_cfg, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        hf.export_hf(small, small_cfg, tmp_path / "file")

    out = tmp_path / "out"
    hf.export_hf(small, small_cfg, out, source="first")
    with pytest.raises(FileExistsError, match="already holds an HF export.*overwrite"):
        hf.export_hf(small, small_cfg, out)
    hf.export_hf(small, small_cfg, out, overwrite=True, source="second")
    assert json.loads((out / "config.json").read_text())["flaxprune"]["source"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "foreign", "out"]  # no staging left behind
    (out / "mine.txt").write_text("mine")  # no longer only ours: never replaced
    with pytest.raises(FileExistsError, match="is not a flaxprune HF export"):
        hf.export_hf(small, small_cfg, out, overwrite=True)
    assert (out / "mine.txt").read_text() == "mine"


def test_bad_input_is_one_line_naming_the_parameter(reduced, tmp_path):
    small, small_cfg = reduced
    cases = [
        (dict(params=gated_params(), config=CONFIG), r"params='bert/.*log_alpha'.*flaxprune.shrink"),
        (dict(params={"params": small}, config=small_cfg), r"params=\['params'\].*variables\['params'\]"),
        (dict(params=small, config=CONFIG), r"params='bert/encoder/layer_0/attention/key/P'.*fit the config"),
        (dict(params=small, config=fp.Plan()), r"config=Plan\(.*a flaxprune BertConfig"),
        (dict(params=small, config=small_cfg, labels=["a", "b"]), r"labels=\['a', 'b'\].*3 distinct names"),
        (dict(params=small, config=small_cfg, tokenizer=tmp_path), r"tokenizer=.*vocab.txt"),
        (dict(params=small, config=small_cfg, extra={"format": "mine"}), r"extra=\['format'\].*keys other than"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            hf.export_hf(output=tmp_path / "never", **kwargs)
        assert "\n" not in str(e.value) and str(e.value).startswith("export_hf: ")
    assert not (tmp_path / "never").exists()


# --- Damage is named -----------------------------------------------------------------------------


def copy(folder, to):
    to.mkdir()
    for p in folder.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


def test_a_damaged_or_mismatching_folder_is_named(exported, tmp_path):
    folder = exported[0]
    cut = copy(folder, tmp_path / "truncated")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*truncated/model.safetensors .*truncated or corrupt"):
        hf.load_hf(cut)

    flipped = copy(folder, tmp_path / "flipped")
    (flipped / "model.safetensors").write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(ValueError, match=r"flipped/model.safetensors .*does not match the SHA-256"):
        hf.load_hf(flipped)

    bad_rank = copy(folder, tmp_path / "rank")
    cfg = json.loads((bad_rank / "config.json").read_text())
    cfg["flaxprune"]["layers"][0]["attention.self.query"]["rank"] = 3
    (bad_rank / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"'bert.encoder.layer.0.attention.self.query.weight_in' .* shape \(2, 8\), "
                                         r"expected \(3, 8\)"):
        hf.load_hf(bad_rank)

    cfg["flaxprune"]["layers"][0]["attention.self.query"] = {"kind": "sparse", "rank": 2}
    (bad_rank / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"rank/config.json has layers\[0\]\['attention.self.query'\]"):
        hf.load_hf(bad_rank)

    (bad_rank / "config.json").write_text("{\"hidden_size\": 8,")
    with pytest.raises(ValueError, match=r"rank/config.json is not valid JSON"):
        hf.load_hf(bad_rank)
    (bad_rank / "model.safetensors").unlink()
    (bad_rank / "config.json").write_text(json.dumps(exported[1]))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf.load_hf(bad_rank)


# --- A finished GLUE run -------------------------------------------------------------------------


def test_export_run_hf_takes_the_runs_reduced_model_else_its_best_checkpoint(tmp_path):
    root, pretrained = write_tiny_glue(tmp_path / "data")
    cfg, encoder = load_hf_bert(pretrained, num_labels=2, dropout=0.0)
    model_cfg = dataclasses.replace(cfg, factorized=True, gated=True)
    params = random_params(model_cfg)
    params = jax.tree_util.tree_map_with_path(  # every third component of every projection closed
        lambda p, x: jnp.where(jnp.arange(x.shape[0]) % 3 == 0, -10.0, 5.0) if p[-1].key == "log_alpha" else x, params)
    small, small_cfg = fp.shrink(params, model_cfg)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(tiny_glue_config(root, pretrained).to_json_best_effort())
    (run / "summary.json").write_text(json.dumps({"status": "done", "reduced_accuracy": 0.75, "speedup": 1.5}))
    store = CheckpointStore(run / "best", 1)
    store.save(3, {"trainable": {"params": jax.device_get(params)}}, {"model_config": config_to_json(model_cfg)})
    store.close()

    written = hf.export_run_hf(run, tmp_path / "from_best")  # no reduced/ yet: the best checkpoint, shrunk
    assert written["flaxprune"]["source"].endswith("best (step 3, shrunk)")
    assert written["id2label"] == {"0": "0", "1": "1"}
    assert written["flaxprune"]["run"]["task"] == "sst2"
    assert written["flaxprune"]["run"]["summary"]["reduced_accuracy"] == 0.75
    assert (tmp_path / "from_best" / "vocab.txt").read_text() == (pretrained / "vocab.txt").read_text()
    config, loaded = hf.load_hf(tmp_path / "from_best")
    x = inputs(t=12)
    np.testing.assert_array_equal(logits(loaded, config, x), logits(small, small_cfg, x))

    save_reduced(run / "reduced", small, small_cfg)
    written = hf.export_run_hf(run, tmp_path / "from_reduced")
    assert written["flaxprune"]["source"] == str(run / "reduced")
    _, again = hf.load_hf(tmp_path / "from_reduced")
    jax.tree.map(np.testing.assert_array_equal, again, loaded)

    with pytest.raises(FileExistsError, match="already holds an HF export"):
        hf.export_run_hf(run, tmp_path / "from_reduced")
    written = hf.export_run_hf(run / "reduced", tmp_path / "bare")  # a reduced-model folder: no labels, no run
    assert written["flaxprune"]["source"] == str(run / "reduced") and "run" not in written["flaxprune"]
    from_run = json.loads((tmp_path / "from_reduced" / "config.json").read_text())
    assert written["flaxprune"]["layers"] == from_run["flaxprune"]["layers"]
    assert written["flaxprune"]["weights_sha256"] == from_run["flaxprune"]["weights_sha256"]  # the same tensors
    with pytest.raises(FileNotFoundError, match="neither a flaxprune run directory nor a reduced model"):
        hf.export_run_hf(tmp_path / "data", tmp_path / "x")
    (run / "config.json").write_text(json.dumps({"task": "lm"}))
    with pytest.raises(ValueError, match=r"run_dir=.* is a task='lm' run; accepted: a GLUE run"):
        hf.export_run_hf(run, tmp_path / "y")


def test_a_plain_hf_classifier_folder_loads_too(tmp_path):
    tensors = {f"bert.{k}": v for k, v in torch_tensors().items()}
    rng = np.random.default_rng(0)
    tensors["classifier.weight"] = rng.normal(size=(2, 8)).astype(np.float32)
    tensors["classifier.bias"] = np.zeros(2, np.float32)
    folder = write_folder(tmp_path / "hf", tensors, {**HF_CONFIG, "architectures": ["BertForSequenceClassification"],
                                                     "id2label": {"0": "no", "1": "yes"}})
    config, params = hf.load_hf(folder)
    assert config.num_labels == 2 and not config.factorized
    assert logits(params, config, inputs(t=12)).shape == (3, 2)
    del tensors["classifier.bias"]
    write_folder(folder, tensors, HF_CONFIG)
    with pytest.raises(ValueError, match=r"hf/model.safetensors has no tensor 'classifier.bias'"):
        hf.load_hf(folder)
