"""The cost of verified reads: loader records/s with no checks, shard-level checks (size, SHA-256
and record count of each whole shard) and record-level checks (also each record's signal
SHA-256), in one process, interleaved repeats.

    .venv/bin/python benchmarks/bench_verify.py [--copies 5] [--repeats 3]

LUDB (data/ludb, 200 records) is replicated `--copies` times by symlink and ingested once with
the platform's own ingest into out/bench/verify/ (reused on later runs). Each pass is an exact
read of the train split by one reader (no DataLoader workers: one core), as training and
evaluation do it. Prints records/s per mode and the ratio against no checks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(dest: Path, copies: int) -> None:
    import ray

    from bench_ingest import replicate
    from clef_platform.ingest.adapters import get_adapter
    from clef_platform.ingest.pipeline import IngestConfig, run_ingest

    with tempfile.TemporaryDirectory(prefix="clef-bench-verify-") as tmp:
        replicate(REPO / "data" / "ludb", Path(tmp), copies)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            run_ingest(IngestConfig(corpus="wfdb", source=Path(tmp), dest=str(dest),
                                    shard_bytes=32 * 2**20, workers=2),
                       list_refs=lambda corpus, source: get_adapter(
                           "wfdb", record_id="relative_path").list_records(source))
        finally:
            ray.shutdown()


def one_pass(url: str, verify: str) -> tuple[int, float]:
    from clef_platform.loader import LoaderConfig, record_dataset

    cfg = LoaderConfig(url, "train", mode="exact", rank=0, world_size=1, verify=verify)
    t0 = time.perf_counter()
    n = sum(1 for _ in record_dataset(cfg))
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    torch.set_num_threads(1)
    dest = REPO / "out" / "bench" / f"verify-{a.copies}"
    if not (dest / "manifest.parquet").exists():
        build(dest, a.copies)
    modes = ("none", "shards", "records")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    one_pass(str(dest), "none")                      # warm the page cache
    for _ in range(a.repeats):
        for m in modes:                              # interleaved: drift hits every mode alike
            n, s = one_pass(str(dest), m)
            rates[m].append(n / s)
    base = statistics.mean(rates["none"])
    print(f"loader, exact pass of the train split ({n} records), one process, "
          f"{a.repeats} interleaved repeats")
    print(f"{'verify':>8} {'records/s':>10} {'spread':>8} {'vs none':>8}")
    for m in modes:
        mean = statistics.mean(rates[m])
        spread = (max(rates[m]) - min(rates[m])) / mean
        print(f"{m:>8} {mean:10.0f} {spread:8.1%} {mean / base:8.3f}")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
