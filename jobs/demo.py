"""The README's main job: the platform end to end on the bundled real ECGs.

Stages run in order and each prints what it produced. Everything is local: a local Ray,
the object store as a folder under --out, Feast's SQLite online store.
"""

import argparse
import logging
from pathlib import Path

import pretrain_local


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where every stage writes")
    p.add_argument("--steps", type=int, default=200, help="pretraining steps")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("demo")

    log.info("stage 1/1: single-process CLEF-small pretraining on bundled LUDB records")
    summary = pretrain_local.main(["--source", "data/ludb", "--out", str(a.out / "local"),
                                   "--steps", str(a.steps)])
    log.info("loss %.4f -> %.4f over %d steps; checkpoint %s",
             summary["first_loss"], summary["last_loss"], summary["steps"], summary["checkpoint"])


if __name__ == "__main__":
    main()
