"""FLOP on a small Transformer-XL over the embedded corpus (CPU-sized).

    python experiments/main.py --config=experiments/configs/txl_small.py --workdir=/tmp/txl_small

2 layers, d_model 128, 4 heads of 32, d_inner 512, memory 64, segments of
64 bytes; every projection a gated FactorizedDense at the parameter-neutral
rank. A few minutes on 2 CPU cores.
"""

import pathlib

from flaxprune.training.config import load_config_file


def get_config():
    c = load_config_file(pathlib.Path(__file__).with_name("sru_small.py"))
    c.model = {
        "name": "txl",
        "n_layers": 2,  # transformer layers
        "n_heads": 4,  # attention heads
        "d_model": 128,  # residual width (tied embedding)
        "d_head": 32,  # width of one head
        "d_inner": 512,  # feed-forward hidden width
        "mem_len": 64,  # cached positions per layer
        "dropout": 0.1,
        "dropatt": 0.0,
        "pre_lnorm": False,  # Transformer-XL enwik8 is post-norm
        "rank": None,  # None: parameter-neutral rank for every projection
    }
    c.train.seq_len = 64
    c.optim.learning_rate = 1e-3
    return c
