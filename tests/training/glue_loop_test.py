"""GLUE fine-tuning through the shared loop, on a tiny self-written BERT checkpoint and TSVs."""

import json
import pathlib
import sys

import chex
import pytest

from flaxprune.training import loop, runs
from flaxprune.training.config import load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))
from bert_checkpoint_test import MAX_POS, VOCAB, write_folder  # noqa: E402

WORDS = ["good", "bad", "movie", "great", "awful", "fun", "dull", "plot", "acting", "story", "a", "the", "is", "was", "so"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


def write_tiny_glue(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A tiny BERT checkpoint folder and an SST-2 ``glue_data`` layout under ``root``."""
    folder = write_folder(root / "bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    assert len(vocab) == VOCAB
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    sst = root / "glue" / "SST-2"
    sst.mkdir(parents=True)
    rows = [("the movie was so good", 1), ("awful plot", 0), ("great acting", 1), ("dull story", 0)] * 6
    for split, data in (("train", rows), ("dev", rows[:8])):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in data]
        (sst / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root, folder


def glue_config(root, folder, **overrides):
    c = load_config_file(ROOT / "experiments/configs/bert_glue.py")
    c.model.checkpoint = str(folder)
    c.data.update(task="sst2", manual_dir=str(root / "glue"), data_dir=str(root / "tfds"))
    c.train.update(batch_size=4, seq_len=MAX_POS, steps=6, log_every=2, eval_every=3, checkpoint_every=3)
    c.train.update(eval_batch_size=4, speed_batch_size=4)
    c.optim.warmup_steps = 2
    c.prune.target_warmup = 3
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def test_flop_fine_tuning_shrinks_to_the_same_dev_metrics(setup, tmp_path):
    root, folder = setup
    logs = []
    summary = loop.train(glue_config(root, folder), tmp_path, log=logs.append, progress=False)
    assert any("initialised from the task's pretrained weights, gates from the spectrum" in line for line in logs)
    assert summary["status"] == "done"
    assert summary["reduced_valid_accuracy"] == pytest.approx(summary["valid_accuracy"])
    assert summary["reduced_params"] <= summary["params"]
    assert summary["sparsity_basis"] == "dense" and summary["prunable_params"] < summary["params"]
    targets = [r["target"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert targets[0] < 0 and targets[-1] == pytest.approx(0.5)  # the ramp starts at the all-open sparsity
    assert "log_alpha" in json.dumps(runs.report_checkpoint(tmp_path)) or "factorized" in runs.report_checkpoint(
        tmp_path
    )
    assert runs.evaluate_run(tmp_path, "valid", reduced=True)["valid_accuracy"] == pytest.approx(
        summary["reduced_valid_accuracy"]
    )


def test_dense_baseline_and_resume(setup, tmp_path):
    root, folder = setup
    cfg = glue_config(root, folder, **{"prune.enabled": False})
    full = loop.train(cfg, tmp_path / "full", log=lambda _: None, progress=False)
    assert "reduced_params" not in full and full["status"] == "done"

    def stop(step):  # a crash after the step-3 checkpoint: the rerun resumes from it
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, tmp_path / "cut", on_step=stop, log=lambda _: None, progress=False)
    logs = []
    loop.train(cfg, tmp_path / "cut", log=logs.append, progress=False)
    assert any("resumed from step 3" in line for line in logs)

    chex.assert_trees_all_equal(runs.load_run(tmp_path / "cut")[1], runs.load_run(tmp_path / "full")[1])


def test_unknown_task_is_refused_before_writing(setup, tmp_path):
    root, folder = setup
    with pytest.raises(ValueError, match="sst3"):
        loop.train(glue_config(root, folder, **{"data.task": "sst3"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
