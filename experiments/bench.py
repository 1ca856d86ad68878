"""The speed suite: reduced models after ``shrink`` against the unpruned ones (inference and training).

    python experiments/bench.py --quick                # small models: a few minutes on 2 CPU cores
    python experiments/bench.py                        # the full CPU suite: experiments/results/bench_cpu.{md,json}

Thin entry point: the same as ``flaxprune bench`` (its ``--help`` lists the
flags); the suite is ``flaxprune.benchmark``.
"""

import sys

from flaxprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
