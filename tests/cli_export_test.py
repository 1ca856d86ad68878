"""``flaxprune export``'s flags, formats (jax.export, HF) and one-line errors; tests/export_test.py and
tests/hf_export_test.py export real models.

Every ``cli.main`` call parses into absl's global FLAGS after ``unparse_flags()``, as in cli_test.py.
"""

import json

import pytest

import flaxprune as fp
from flaxprune import cli


# --- flaxprune export: its flags and one-line errors (tests/export_test.py exports a trained run) -------------


@pytest.fixture(scope="module")
def reduced_model(tmp_path_factory):
    """A tiny shrunk SRU saved as flaxprune shrink saves one."""
    import jax
    import jax.numpy as jnp

    from flaxprune.models import SRUConfig, SRULanguageModel
    from flaxprune.training.checkpoint import save_reduced

    cfg = SRUConfig(vocab_size=20, d_model=8, n_layers=2, rank=3, dropout=0.0)
    model = SRULanguageModel(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), model.initial_carry(1))["params"]
    folder = tmp_path_factory.mktemp("reduced") / "small"
    save_reduced(folder, *fp.shrink(params, cfg))
    return folder


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["export", "--output={tmp}/out"], "give one of --workdir=RUN or --checkpoint=DIR"),
        (["export", "--workdir={tmp}/a", "--checkpoint={tmp}/b", "--output={tmp}/out"], "DIR, not both"),
        (["export", "--workdir={tmp}/run"], "missing required flag(s): --output"),
        (["export", "--workdir={tmp}/run", "--output={tmp}/out", "--split=test"], "--split is not a flag of export"),
    ],
)
def test_export_usage_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("flaxprune export: ") and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "source,output,message",
    [
        ("--workdir={tmp}/nonexistent", "{tmp}/out", "{tmp}/nonexistent does not exist"),
        ("--workdir={tmp}/other", "{tmp}/out", "{tmp}/other/config.json is missing"),
        ("--workdir={reduced}", "{tmp}/out", "is not a flaxprune run directory"),  # --checkpoint takes that
        ("--workdir={tmp}/run", "{tmp}/out", "run {tmp}/run has no reduced model in {tmp}/run/reduced"),
        ("--checkpoint={tmp}/run", "{tmp}/out", "has no reduced model"),
        ("--checkpoint={tmp}/other", "{tmp}/out", "{tmp}/other is neither a flaxprune run directory nor a reduced"),
        ("--checkpoint={reduced}", "{tmp}/other", "output {tmp}/other is not empty (notes.txt)"),
        ("--checkpoint={reduced}", "{tmp}/run/config.json", "is a file"),
        ("--checkpoint={reduced}", "{reduced}", "is not a flaxprune export: nothing was written"),
        ("--checkpoint={reduced}", "{tmp}/old", "already holds an export: nothing was written. Pass --overwrite"),
    ],
)
def test_export_errors_are_one_line_exit_1_and_write_nothing(source, output, message, reduced_model, tmp_path,
                                                             capsys):
    from flaxprune import export

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # a run that has not written reduced/
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / export.MANIFEST).write_text(json.dumps({"format": export.FORMAT}))  # an earlier export
    before, reduced_before = _files(tmp_path), _files(reduced_model)
    argv = ["export", source, f"--output={output}"]
    argv = [arg.format(tmp=tmp_path, reduced=reduced_model) for arg in argv]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("flaxprune export: ") and message.format(tmp=tmp_path) in err, err
    assert _files(tmp_path) == before and _files(reduced_model) == reduced_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "other", "run"]


def test_export_without_flatbuffers_is_one_line(reduced_model, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flatbuffers" else find_spec(n, *a))
    assert cli.main(["export", f"--checkpoint={reduced_model}", f"--output={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flaxprune export: jax serializes an export with the 'flatbuffers' package")
    assert "pip install flatbuffers" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_export_flags_reach_the_library_and_it_prints_where_and_what(tmp_path, monkeypatch, capsys):
    from flaxprune import export

    seen = []
    manifest = {"source": "/x/reduced", "model_class": "SRULanguageModel", "total_params": 1234,
                "inputs": [{"name": "tokens", "shape": ["b", "t"]}, {"name": "carry/c", "shape": ["b", 2, 8]}],
                "platforms": ["cpu", "cuda", "tpu"]}

    def export_reduced(path, output, *, overwrite=False, run_only=False):
        seen.append((path, output, overwrite, run_only))
        return manifest

    monkeypatch.setattr(export, "export_reduced", export_reduced)
    out = tmp_path / "out"
    assert cli.main(["export", f"--workdir={tmp_path}", f"--output={out}"]) == 0
    assert capsys.readouterr().out == (
        f"exported /x/reduced to {out}\n"
        "SRULanguageModel: 1,234 params, inputs tokens[b,t], carry/c[b,2,8], platforms cpu, cuda, tpu\n"
    )
    assert cli.main(["export", f"--checkpoint={tmp_path}", f"--output={out}", "--overwrite"]) == 0
    assert seen == [(str(tmp_path), str(out), False, True), (str(tmp_path), str(out), True, False)]


def test_export_format_hf_reaches_export_run_hf_and_prints_what(tmp_path, monkeypatch, capsys):
    from flaxprune import hf_export

    seen = []
    written = {"num_labels": 2, "flaxprune": {"source": "/x/reduced", "total_params": 1546, "layers": [
        {"attention.self.query": {"kind": "dense"}, "intermediate.dense": {"kind": "factored"}}]}}

    def export_run_hf(path, output, *, overwrite=False):
        seen.append((path, output, overwrite))
        return written

    monkeypatch.setattr(hf_export, "export_run_hf", export_run_hf)
    (tmp_path / "config.json").write_text("{}")  # a run directory, as --workdir requires
    out = tmp_path / "out"
    assert cli.main(["export", "--format=hf", f"--workdir={tmp_path}", f"--output={out}"]) == 0
    assert capsys.readouterr().out == (
        f"exported /x/reduced to {out} (HF format)\n"
        "BertForSequenceClassification: 1,546 params, 2 labels; projections: 1 dense, 1 factored, 0 bias_only\n")
    assert cli.main(["export", "--format=hf", f"--checkpoint={tmp_path}", f"--output={out}", "--overwrite"]) == 0
    assert seen == [(str(tmp_path), str(out), False), (str(tmp_path), str(out), True)]
    assert cli.main(["export", "--format=hf", f"--workdir={tmp_path / 'nope'}", f"--output={out}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flaxprune export: ") and "is not a flaxprune run directory" in err and err.count("\n") == 1
    assert cli.main(["export", "--format=onnx", f"--workdir={tmp_path}", f"--output={out}"]) == 2
    assert "--format=onnx: value should be one of <jax|hf>" in capsys.readouterr().err
    assert seen == [(str(tmp_path), str(out), False), (str(tmp_path), str(out), True)]


def test_the_jax_format_stays_the_default(tmp_path, monkeypatch, capsys):
    from flaxprune import export

    seen = []
    manifest = {"source": "/x/reduced", "model_class": "SRULanguageModel", "total_params": 1234,
                "inputs": [{"name": "tokens", "shape": ["b", "t"]}], "platforms": ["cpu"]}
    monkeypatch.setattr(export, "export_reduced", lambda *a, **k: seen.append((a, k)) or manifest)
    assert cli.main(["export", f"--workdir={tmp_path}", f"--output={tmp_path / 'o'}"]) == 0
    assert cli.main(["export", "--format=jax", f"--checkpoint={tmp_path}", f"--output={tmp_path / 'o'}"]) == 0
    assert len(seen) == 2 and "platforms cpu" in capsys.readouterr().out
