"""The ``flaxprune`` console command."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from flaxprune import demo


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="FLOP end to end on a byte-level MLP LM over the embedded corpus.")
    defaults = demo.DemoConfig()
    for field in ("steps", "target", "target_warmup", "hidden", "layers", "batch_size", "seed", "corpus_bytes"):
        value = getattr(defaults, field)
        p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    p.add_argument("--baseline", action="store_true", help="also train the unpruned model for comparison")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flaxprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        fields = {f.name for f in dataclasses.fields(demo.DemoConfig)}
        cfg = demo.DemoConfig(**{k: v for k, v in vars(args).items() if k in fields})
        if args.baseline:
            print("== unpruned baseline ==")
            base = demo.run(dataclasses.replace(cfg, gated=False))
            print(f"baseline test bpc {base['test_bpc']:.4f}, params {base['params_before']:,}\n")
        print(f"== FLOP, target sparsity {cfg.target} ==")
        demo.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
