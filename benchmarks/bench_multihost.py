"""The cost of crossing hosts, on the multi-host test bed (infra/testbed; needs root).

    sudo .venv/bin/python benchmarks/bench_multihost.py [--steps 20]

Prints, each measured in this process against its baseline in the same bed:
  - CLEF-small (simclr objective, DDP over gloo) global samples/s with 2 workers on one host
    (PACK) and with 2 workers on two hosts (STRICT_SPREAD), and the ratio;
  - ingest records/s of LUDB to S3 with one worker host and with two, and the ratio
    (the whole `ray job submit`, driver start included, both ways).
Every stage is the command a user runs, submitted with `ray job submit` to the bed's head;
data and runs are on the bed's S3 host. All hosts share this machine's cores, so the figures
say what the network path costs here, not what separate machines would gain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.testbed import bed as testbed  # noqa: E402


def _last_report(bed, run: str) -> dict:
    """The last training report in the run's checkpoint record on S3."""
    snap = json.loads(bed.s3("w1", f"print(s3.get_object(Bucket='clef', Key='runs/{run}/"
                                   "checkpoint_manager_snapshot.json')['Body'].read().decode())"))
    from clef_platform.layout.train_snapshot import loop_reports

    return loop_reports(snap, key="samples_per_s")[-1]


def _records(bed, key: str) -> int:
    # The footer's row count: decoding the table started pyarrow's thread pool, and one run's
    # interpreter then aborted at exit ("terminate called without an active exception").
    out = bed.s3("w1", "import io, pyarrow.parquet as pq\n"
                       f"b = s3.get_object(Bucket='clef', Key='{key}')['Body'].read()\n"
                       "print(pq.read_metadata(io.BytesIO(b)).num_rows)")
    return int(out.split()[-1])


def ingest(bed, dest: str, sid: str) -> float:
    t = time.perf_counter()
    p = bed.submit(["python", "jobs/ingest.py", "--corpus", "ludb", "--source", "data/ludb",
                    "--dest", f"s3://clef/{dest}", "--shard-bytes", "1000000", "--workers", "2",
                    "--cpus-per-worker", "0.5", "--no-progress"], sid)
    if p.returncode != 0:
        raise RuntimeError(f"ingest {sid} failed:\n{(p.stdout + p.stderr)[-3000:]}")
    seconds = time.perf_counter() - t
    return _records(bed, f"{dest}/manifest.parquet") / seconds


def train(bed, placement: str, steps: int, sid: str) -> dict:
    p = bed.submit(["python", "jobs/pretrain.py", "--scale", "small", "--method", "simclr",
                    "--no-deepspeed", "--data", "s3://clef/datasets/ludb", "--storage",
                    "s3://clef/runs", "--run-name", sid, "--workers", "2", "--placement",
                    placement, "--cpus-per-worker", "1", "--batch-per-worker", "8",
                    "--steps", str(steps), "--checkpoint-every", str(steps),
                    "--data.loader_workers", "1"], sid)
    if p.returncode != 0:
        raise RuntimeError(f"pretrain {sid} failed:\n{(p.stdout + p.stderr)[-3000:]}")
    r = _last_report(bed, sid)
    return {"samples_per_s": r["samples_per_s"], "hosts": sorted(set(r["workers"]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    reason = testbed.unavailable_reason()
    if reason:
        print(f"bench_multihost: skipped: {reason}")
        return 0
    bed = testbed.Bed(testbed.BedConfig(workers=2))
    bed.up()
    try:
        bed.s3("head", "s3.create_bucket(Bucket='clef')")
        two = ingest(bed, "datasets/ludb", "ingest-two-hosts")
        bed.stop_host("w2")
        one = ingest(bed, "datasets/ludb-one-host", "ingest-one-host")
        bed.wipe_tmp("w2")
        bed.start_ray_worker("w2")
        bed.wait_nodes(3)
        pack = train(bed, "PACK", a.steps, "bench-pack")
        spread = train(bed, "STRICT_SPREAD", a.steps, "bench-spread")
    finally:
        bed.down()
    print(f"CLEF-small 2 workers, one host (PACK, {pack['hosts']}): "
          f"{pack['samples_per_s']:.1f} samples/s")
    print(f"CLEF-small 2 workers, two hosts (STRICT_SPREAD, {spread['hosts']}): "
          f"{spread['samples_per_s']:.1f} samples/s")
    print(f"  two hosts / one host: {spread['samples_per_s'] / pack['samples_per_s']:.2f}x")
    print(f"ingest LUDB -> S3, one worker host: {one:.1f} records/s")
    print(f"ingest LUDB -> S3, two worker hosts: {two:.1f} records/s")
    print(f"  two hosts / one host: {two / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
