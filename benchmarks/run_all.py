"""Runs every benchmark in turn with its default settings and prints their figures.

    .venv/bin/python benchmarks/run_all.py [--only views loss ...]

Each script is standalone (see its --help) and prints its own figures and ratios against a
baseline measured in the same process. Figures depend on the machine: read the ratios.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["encoder", "views", "loss", "ingest", "features", "train", "eval", "finetune"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    a = p.parse_args()
    failed = []
    for name in a.only:
        print(f"\n######## bench_{name}.py", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / f"bench_{name}.py")], cwd=HERE.parent).returncode
        print(f"######## bench_{name}.py: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
