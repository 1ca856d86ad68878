"""FLOP's WikiText-103 SRU (Wang et al., 2020, Sec. 4.1): 12 layers, d=2048, rank 512, tied adaptive layers.

    python experiments/main.py --config=experiments/configs/sru_wt103.py --workdir=gs://bucket/sru_wt103 \
        [--config.data.manual_dir=DIR]     # wikitext-103-v1.zip or its wiki.*.tokens; omit to download

The vocabulary (267,735 words) is split at the paper's cutoffs 10k, 20k, 40k,
60k and 100k into six frequency bands with d, d, d/4, d/4, d/16, d/16 dims
(``div_val=4`` every 2 bands, ``d_proj = d``); the softmax is tied to the
embedding. FLOP prunes the factorized recurrent matrices and the bands' dims
under one budget. Sized for an accelerator: it builds abstractly anywhere
(``flaxprune report --config=experiments/configs/sru_wt103.py`` prints its size without allocating it).
"""

import pathlib

import ml_collections

from flaxprune.training.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(pathlib.Path(__file__).with_name("sru_wt2_small.py"))
    c.model.d_model = 2048
    c.model.n_layers = 12
    c.model.rank = 512
    c.model.d_embed = 2048
    c.model.cutoffs = (10_000, 20_000, 40_000, 60_000, 100_000)
    c.model.div_val = 4.0
    c.model.div_freq = 2
    c.model.dropout = 0.1
    c.model.loss_chunk = 4096
    c.data.name = "wikitext103"
    c.train.batch_size = 64
    c.train.seq_len = 256
    c.train.steps = 400_000
    c.train.log_every = 100
    c.train.eval_every = 5_000
    c.train.checkpoint_every = 5_000
    c.train.eval_batch_size = 16
    c.train.speed_batch_size = 4
    c.optim.schedule = "noam"
    c.optim.learning_rate = 2.0 / 2048**0.5
    c.optim.warmup_steps = 16_000
    c.optim.clip_norm = 0.3
    c.optim.weight_decay = 1e-7
    c.prune.target = 0.5
    c.prune.target_warmup = 100_000
    return c
