"""FLOP on a CPU-sized word-level SRU with a tied adaptive embedding and softmax (WikiText-2 or any word corpus).

    python experiments/main.py --config=experiments/configs/sru_wt2_small.py --workdir=/tmp/sru_wt2 \
        --config.data.manual_dir=DIR     # wiki.{train,valid,test}.tokens or {train,valid,test}.txt

Three SRU layers of d=256 (each W factorized at rank 64) between an adaptive
embedding of three frequency bands (ids < 2,000: 256 dims; < 10,000: 128;
the rest: 64) and the adaptive softmax tied to it. FLOP gates the recurrent
components and every band's embedding dims under one budget: 50% of all of
them. ``experiments/wordlm.py`` runs it dense and pruned on any word corpus
(choosing cutoffs that fit its vocabulary). Set ``--config.prune.enabled=False``
for the unpruned baseline, ``--config.model.prune_embeddings=False`` to prune
only the recurrent layers.
"""

import pathlib

import ml_collections

from flaxprune.training.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
    c = load_config_file(pathlib.Path(__file__).with_name("sru_small.py"))
    c.model = ml_collections.ConfigDict()
    c.model.name = "word_sru"
    c.model.d_model = 256  # hidden size of every SRU layer, and the adaptive layers' projection size
    c.model.n_layers = 3
    c.model.rank = 64  # rank of each factorized W
    c.model.d_embed = 256  # dims of the most frequent band
    c.model.cutoffs = (2000, 10000)  # first ids of the rarer bands (the vocabulary is ordered by frequency)
    c.model.div_val = 2.0  # each band has div_val times fewer dims than the one before ...
    c.model.div_freq = 1  # ... every div_freq bands
    c.model.tie_weights = True  # the softmax shares the embedding's tables, projections and gates
    c.model.prune_embeddings = True  # FLOP gates the bands' dims too (one budget with the recurrent layers)
    c.model.dropout = 0.3
    c.model.highway_bias = -3.0
    c.model.loss_chunk = 256  # tokens per step of the adaptive softmax's tail-cluster scan

    c.data.name = "wikitext2"  # 'wikitext2' / 'wikitext103' (downloaded or from manual_dir) or 'text_word'
    c.data.vocab = None  # a word corpus's vocabulary is its training words, by frequency

    c.train.batch_size = 32
    c.train.seq_len = 70
    c.train.steps = 2000
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.eval_batch_size = 8
    c.train.speed_batch_size = 8  # the inference timing builds every word's log-probability

    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 100
    c.optim.clip_norm = 0.25

    c.prune.target = 0.5
    c.prune.target_warmup = 800
    return c
