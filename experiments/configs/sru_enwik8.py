"""FLOP's enwik8 SRU (Wang et al., 2020, Table 1): 6 layers, d=3056, rank 512.

    python experiments/main.py --config=experiments/configs/sru_enwik8.py --workdir=gs://bucket/sru_enwik8 \
        --config.data.manual_dir=/data/enwik8     # or omit manual_dir to download enwik8.zip

About 37M parameters before pruning; too big for a CPU, sized for a TPU/GPU
(batch 64 streams x 256 bytes, FLOP's settings: Noam schedule with 16k
warmup, clip 0.3, weight decay 1e-7, target 0.7 reached over the warmup).
Set ``--config.prune.enabled=False`` for the unpruned baseline.
"""

import pathlib

from flaxprune.training.config import load_config_file


def get_config():
    c = load_config_file(pathlib.Path(__file__).with_name("sru_small.py"))
    c.model.d_model = 3056
    c.model.n_layers = 6
    c.model.rank = 512
    c.data.name = "enwik8"
    c.data.max_bytes = None
    c.train.batch_size = 64
    c.train.seq_len = 256
    c.train.steps = 400_000
    c.train.log_every = 100
    c.train.eval_every = 5_000
    c.train.checkpoint_every = 5_000
    c.train.eval_batch_size = 16
    c.optim.schedule = "noam"
    c.optim.learning_rate = 2.0 / 3056**0.5  # FLOP: lr 2 scaled by 1/sqrt(d)
    c.optim.warmup_steps = 16_000
    c.optim.clip_norm = 0.3
    c.optim.weight_decay = 1e-7
    c.prune.target = 0.7
    c.prune.target_warmup = 100_000
    return c
