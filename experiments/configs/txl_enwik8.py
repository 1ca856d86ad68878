"""Transformer-XL base on enwik8 (Dai et al., 2019; FLOP Table 2): 12 layers, d 512, 8 heads.

    python experiments/main.py --config=experiments/configs/txl_enwik8.py --workdir=gs://bucket/txl_enwik8 \
        --config.data.manual_dir=/data/enwik8

About 41M parameters; segments and memory of 512 bytes, batch 22 (TXL's
setting), cosine schedule from 2.5e-4 over 400k steps, FLOP to 0.7 sparsity.
"""

import pathlib

from flaxprune.training.config import load_config_file


def get_config():
    c = load_config_file(pathlib.Path(__file__).with_name("txl_small.py"))
    c.model.update(n_layers=12, n_heads=8, d_model=512, d_head=64, d_inner=2048, mem_len=512, dropout=0.1)
    c.data.name = "enwik8"
    c.data.max_bytes = None
    c.train.batch_size = 22
    c.train.seq_len = 512
    c.train.steps = 400_000
    c.train.log_every = 100
    c.train.eval_every = 5_000
    c.train.checkpoint_every = 5_000
    c.train.eval_batch_size = 10
    c.optim.schedule = "cosine"
    c.optim.learning_rate = 2.5e-4
    c.optim.warmup_steps = 0
    c.optim.clip_norm = 0.25
    c.prune.target = 0.7
    c.prune.target_warmup = 100_000
    return c
