"""Single-process CLEF pretraining on a folder of WFDB records (the reference loop, no Ray).

    python jobs/pretrain_local.py --source data/ludb/data --out out/local --steps 200
"""

import argparse
import json
import logging
from pathlib import Path

from clef_platform.train.local import LocalPretrainConfig, pretrain


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv=None) -> LocalPretrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=Path("data/ludb"), help="corpus folder")
    p.add_argument("--corpus", default="ludb", help="registered corpus adapter (ludb, cinc2021, wfdb, ...)")
    p.add_argument("--out", type=Path, default=Path("out/local"), help="checkpoint and export folder")
    p.add_argument("--scale", choices=["small", "medium", "large"], default="small")
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not a.source.is_dir():
        p.error(f"--source {a.source} is not a folder")
    return LocalPretrainConfig(source=a.source, out_dir=a.out, corpus=a.corpus, scale=a.scale,
                               steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = pretrain(parse_args(argv))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
