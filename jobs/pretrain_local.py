"""Single-process CLEF pretraining on a folder of WFDB records (the reference loop, no Ray).

    python jobs/pretrain_local.py --source data/ludb/data --out out/local --steps 200
"""

import argparse
import json
from pathlib import Path

from clef_platform import cli, logs


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="pretrain_local.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=Path("data/ludb"), help="corpus folder")
    p.add_argument("--corpus", default="ludb", help="registered corpus adapter (ludb, cinc2021, wfdb, ...)")
    p.add_argument("--out", type=Path, default=Path("out/local"), help="checkpoint and export folder")
    p.add_argument("--scale", choices=["small", "medium", "large"], default="small")
    p.add_argument("--steps", type=cli.positive_int, default=200)
    p.add_argument("--batch-size", type=cli.positive_int, default=32)
    p.add_argument("--lr", type=cli.positive_float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cli.existing_dir("--source", a.source)
    from clef_platform.ingest.adapters.registry import available_adapters

    if a.corpus not in available_adapters():
        raise cli.UsageError(f"--corpus {a.corpus!r}: no such adapter; available: "
                             f"{', '.join(available_adapters())}")
    from clef_platform.train.local import LocalPretrainConfig

    return LocalPretrainConfig(source=a.source, out_dir=a.out, corpus=a.corpus, scale=a.scale,
                               steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    logs.setup("INFO")
    from clef_platform.train.local import pretrain

    summary = pretrain(cfg)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.main("pretrain_local", main))
