"""Train (or resume) a FLOP language-model experiment.

    python experiments/main.py --config=experiments/configs/sru_small.py --workdir=/tmp/run \
        [--config.prune.target=0.8 ...]

Thin entry point: the same as ``flaxprune train``; all logic is in ``flaxprune.training``.
"""

import sys

from flaxprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
