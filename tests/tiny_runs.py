"""The tiny runs the tests train: their configs, and the files a tiny BERT fine-tuning reads.

Each is as small as its tests allow, so that a run compiles and trains in seconds on a CPU:

* ``tiny_lm_config``: ``experiments/configs/sru_small.py`` shrunk to a 2-layer SRU of width 16
  and rank 4 on 20 kB of its ``stdlib`` corpus, batches of 4 x 16 bytes for 12 steps. The step
  counts are the least the loop tests need: checkpoints at 4, 8 and 12 and a SIGTERM at 6 (so a
  resume starts between two checkpoints), evaluations at 6 and 12, and a sparsity ramp that ends
  at step 6 (so gates close and the reduced model differs from the full one).
* ``write_folder``: an HF-format BERT folder (``config.json``, ``model.safetensors``) of seeded
  random weights with ``BertModel``'s names and PyTorch layouts: hidden 8, 2 layers of 2 heads,
  FFN 16, 20 tokens, 12 positions. Big enough to have every tensor kind and more than one layer
  and head; the BERT loader tests compare it against a numpy forward.
* ``write_tiny_glue`` and ``tiny_glue_config``: that folder plus a 20-word ``vocab.txt`` (the 5
  special tokens and ``WORDS``) and an SST-2 ``glue_data`` layout of 24 training and 8 dev
  sentences, fine-tuned for 6 steps of 4 examples of ``MAX_POS`` tokens, with an evaluation and
  a checkpoint every 3 steps (so a crash at step 4 resumes from step 3).

pytest puts ``tests/`` on ``sys.path`` (``tests/conftest.py`` lives there), so any test imports
these as ``from tiny_runs import tiny_lm_config``.
"""

import json
import math
import pathlib

import numpy as np
from safetensors.numpy import save_file

from flaxprune.training.config import load_config_file

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


def _override(config, overrides):
    """Sets ``config[section][name] = value`` for each ``"section.name": value`` in ``overrides``."""
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


# --- A tiny SRU language model -------------------------------------------------------------------


def tiny_lm_config(**overrides):
    """``sru_small.py`` shrunk to train 12 steps in seconds; ``overrides`` as ``{"train.steps": 4}``."""
    c = load_config_file(CONFIGS / "sru_small.py")
    c.model.d_model, c.model.n_layers, c.model.rank = 16, 2, 4
    c.data.max_bytes = 20_000
    c.train.update(batch_size=4, seq_len=16, steps=12, log_every=2, eval_every=6, checkpoint_every=4)
    c.train.eval_batch_size = 2
    c.prune.target_warmup = 6
    return _override(c, overrides)


# --- A tiny BERT checkpoint ----------------------------------------------------------------------

H, LAYERS, HEADS, FF, VOCAB, MAX_POS = 8, 2, 2, 16, 20, 12
HF_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_act": "gelu",
    "hidden_size": H,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": FF,
    "max_position_embeddings": MAX_POS,
    "type_vocab_size": 2,
    "vocab_size": VOCAB,
    "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.0,
    "position_embedding_type": "absolute",
}


def torch_tensors(seed=0):
    """Random tensors with ``BertModel``'s names and PyTorch layouts (linear weights ``[out, in]``)."""
    rng = np.random.default_rng(seed)
    t = {}

    def put(name, shape, scale=0.3, loc=0.0):
        t[name] = (loc + scale * rng.normal(size=shape)).astype(np.float32)

    def linear(name, n_in, n_out):
        put(f"{name}.weight", (n_out, n_in), scale=1.0 / math.sqrt(n_in))
        put(f"{name}.bias", (n_out,), scale=0.1)

    def norm(name):
        put(f"{name}.LayerNorm.weight", (H,), scale=0.1, loc=1.0)
        put(f"{name}.LayerNorm.bias", (H,), scale=0.1)

    put("embeddings.word_embeddings.weight", (VOCAB, H))
    put("embeddings.position_embeddings.weight", (MAX_POS, H))
    put("embeddings.token_type_embeddings.weight", (2, H))
    norm("embeddings")
    t["embeddings.position_ids"] = np.arange(MAX_POS, dtype=np.int64)[None]  # ignored by the loader
    for i in range(LAYERS):
        for name in ("query", "key", "value"):
            linear(f"encoder.layer.{i}.attention.self.{name}", H, H)
        linear(f"encoder.layer.{i}.attention.output.dense", H, H)
        norm(f"encoder.layer.{i}.attention.output")
        linear(f"encoder.layer.{i}.intermediate.dense", H, FF)
        linear(f"encoder.layer.{i}.output.dense", FF, H)
        norm(f"encoder.layer.{i}.output")
    linear("pooler.dense", H, H)
    return t


def write_folder(folder, tensors=None, config=None, prefix=""):
    """Writes ``config.json`` and ``model.safetensors`` (``torch_tensors()`` and ``HF_CONFIG`` by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = torch_tensors() if tensors is None else tensors
    (folder / "config.json").write_text(json.dumps(HF_CONFIG if config is None else config))
    save_file({prefix + k: v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


# --- A tiny GLUE fine-tuning ---------------------------------------------------------------------

WORDS = ["good", "bad", "movie", "great", "awful", "fun", "dull", "plot", "acting", "story"]
WORDS += ["a", "the", "is", "was", "so"]


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


def tiny_glue_config(root, folder, **overrides):
    """``bert_glue.py`` on ``write_tiny_glue(root)``'s files for 6 steps; ``overrides`` as ``tiny_lm_config``'s."""
    c = load_config_file(CONFIGS / "bert_glue.py")
    c.model.checkpoint = str(folder)
    c.data.update(task="sst2", manual_dir=str(root / "glue"), data_dir=str(root / "tfds"))
    c.train.update(batch_size=4, seq_len=MAX_POS, steps=6, log_every=2, eval_every=3, checkpoint_every=3)
    c.train.update(eval_batch_size=4, speed_batch_size=4)
    c.optim.warmup_steps = 2
    c.prune.target_warmup = 3
    return _override(c, overrides)
