"""FLOP on a small SRU over the embedded corpus (Python's standard library): the README demo.

    python experiments/main.py --config=experiments/configs/sru_small.py --workdir=/tmp/sru_small

Trains a 2-layer SRU (d=256, factorized rank 64, first layer input-gated)
toward 50% sparsity of its prunable weights for 2000 steps of 16 x 128 bytes,
then shrinks it and prints params, bits per character and the measured
inference speedup. About 5-8 minutes on 2 CPU cores. For the real enwik8
use ``--config.data.name=enwik8 --config.data.manual_dir=DIR`` (DIR holds
``enwik8`` or ``enwik8.zip``; omit manual_dir to download it).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.task = "lm"  # 'lm' (language modeling) or 'glue'

    c.model = ml_collections.ConfigDict()
    c.model.name = "sru"  # 'sru' or 'txl'
    c.model.d_model = 256  # hidden size of every SRU layer
    c.model.n_layers = 2  # SRU layers
    c.model.rank = 64  # rank of each factorized recurrent matrix (FLOP enwik8: 512)
    c.model.dropout = 0.1  # dropout on embedding, between layers and on the output
    c.model.highway_bias = -3.0  # initial bias of the highway (reset) gate
    c.model.input_gated_first = True  # first layer gates its inputs (FLOP's HardConcreteLinear)

    c.data = ml_collections.ConfigDict()
    c.data.name = "stdlib"  # 'stdlib' (embedded), 'enwik8', 'text_char' or 'text_word'
    c.data.data_dir = ""  # tfds data dir ('' = ~/tensorflow_datasets)
    c.data.manual_dir = config_dict.placeholder(str)  # folder with the input file(s), if any
    c.data.max_bytes = config_dict.placeholder(int)  # 'stdlib' only: bytes of source to take (default 2 MB)
    # Byte-level ids: 'bytes' (all 256 values) or 'corpus' (the training split's symbols and one id for the rest,
    # as the original FLOP code); None for a word corpus (its vocabulary is its training words).
    c.data.vocab = config_dict.FieldReference("bytes", field_type=str)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16  # parallel streams (split over devices)
    c.train.seq_len = 128  # truncated BPTT length
    c.train.steps = 2000  # updates
    c.train.log_every = 50  # metrics to metrics.jsonl
    c.train.eval_every = 400  # valid bpc with deterministic masks
    c.train.checkpoint_every = 500  # atomic orbax checkpoint
    c.train.keep_checkpoints = 2  # keep the newest N
    c.train.eval_batch_size = 16  # streams for evaluation
    c.train.speed_batch_size = 64  # streams for the final inference timing (batch x seq_len tokens)
    c.train.num_devices = 0  # 0 = all devices
    c.train.seed = 0

    c.optim = ml_collections.ConfigDict()
    c.optim.schedule = "linear_warmup"  # 'constant', 'noam' or 'linear_warmup'
    c.optim.learning_rate = 2e-3  # weights (AdamW)
    c.optim.warmup_steps = 100
    c.optim.gate_learning_rate = 1e-2  # log_alpha (Adam): FLOP's gates need their own, larger rate
    # The multipliers' update (flaxprune.lagrangian.flop_optimizer): 'pi', the default, a proportional-integral
    # controller on log(-lambda_1) that reaches any target without a per-task rate (fields of
    # flaxprune.SparsityController in optim.multiplier; empty = its defaults); 'adam', FLOP's own gradient
    # ascent with Adam at lambda_learning_rate (a faithful reproduction).
    c.optim.multiplier_update = "pi"
    c.optim.multiplier = ml_collections.ConfigDict()
    c.optim.lambda_learning_rate = 1e-2  # multipliers, 'adam' only (Adam, ascent)
    c.optim.clip_norm = 1.0  # on model weights only; 0 disables
    c.optim.weight_decay = 0.0

    c.prune = ml_collections.ConfigDict()
    c.prune.enabled = True  # False: the unpruned baseline (same model, no gates)
    c.prune.target = 0.5  # target sparsity of the prunable weights
    c.prune.target_warmup = 800  # steps over which the target rises from 0
    c.prune.best_tolerance = 0.01  # keep a best checkpoint only at a hard sparsity within this of the target
    c.prune.basis = "factors"  # sparsity of the gated weights ('factors') or of the dense layers they stand for
    # The sparsity the multipliers hold to the target: 'hard', what surgery delivers (the eval masks; merged
    # layers at their dense size), its gradient the expected sparsity's, reached from the expected sparsity along
    # the ramp (flaxprune.straight_through_sparsity); 'expected', FLOP's expected L0 sparsity throughout.
    c.prune.constraint = "hard"
    c.prune.gate_init = "constant"  # log_alpha from prune.gate.drop_rate; 'spectral': from the SVD (warm starts)
    c.prune.gate_range = (2.5, 8.0)  # 'spectral': log_alpha of a zero and of the largest singular component
    c.prune.compact_every = 0  # every how many steps to drop components with P(z != 0) < compact_threshold; 0: never
    c.prune.compact_threshold = 1e-3  # compaction: training gets faster as it prunes (flaxprune.compaction)
    # How the SRU's W matrices are pruned (flaxprune.methods): 'flop', or a baseline: 'agp' (magnitude, dense
    # kernels), 'agp_structured' (magnitude of a learned diagonal between P and Q), 'l0' (a gate per weight),
    # 'l0_block' (a gate per block). Every method but 'flop' is for the SRU only.
    c.prune.method = "flop"
    c.prune.block = (16, 16)  # 'l0_block': rows x columns of a gated block; must divide every W
    c.prune.agp_start = 0  # AGP: the step its cubic schedule starts; it ends at target_warmup
    c.prune.agp_frequency = 100  # AGP: steps between two magnitude-mask updates
    c.prune.agp_l1 = 0.0  # 'agp_structured': L1 strength on the diagonal (0: none)

    c.init_from = ""  # earlier run's workdir to warm-start from (dense or factorized)
    return c
