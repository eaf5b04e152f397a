"""Ingestion benchmark on one set of records: LUDB replicated to a few thousand (symlinks).

Prints, in one run:
  1. storage dtype: bytes/record and decode speed of int16+gain (chosen) vs float32 vs float16
  2. ingest records/s with 2 Ray workers vs the floor of reading the same WFDB files
     sequentially with wfdb.rdrecord (ratio)
  3. training-read samples/s from the shards (webdataset, torch DataLoader, 2 workers) vs
     reading the WFDB files (sequentially, and through a DataLoader with 2 workers) (ratios)

    .venv/bin/python benchmarks/bench_ingest.py [--copies 10] [--shard-mb 32]

Keep it under ~5 minutes on 2 cores. Reads ../shared/data/ludb if present, else data/ludb.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def ludb_source() -> Path:
    shared = REPO.parent / "shared" / "data" / "ludb"
    return shared if (shared / "data").is_dir() else REPO / "data" / "ludb"


def replicate(src: Path, dest: Path, copies: int) -> list[Path]:
    """copy_NNN/<record>.{hea,dat} symlinks: same bytes, new record ids (relative paths)."""
    records = sorted(p.with_suffix("") for p in (src / "data").glob("*.hea"))
    out = []
    for c in range(copies):
        d = dest / f"copy_{c:03d}"
        d.mkdir(parents=True)
        for r in records:
            for ext in (".hea", ".dat"):
                os.symlink(r.with_suffix(ext).resolve(), d / (r.name + ext))
            out.append(d / r.name)
    return out


def bench_dtypes(records: list[Path], n: int = 200) -> None:
    import wfdb

    from clef_platform.ingest.adapters import get_adapter
    from clef_platform.ingest.canonical import process_record
    from clef_platform.layout.shards import decode_sample, encode_record

    refs = list(get_adapter("ludb").list_records(ludb_source()))[:n]
    recs = [process_record(r) for r in refs]
    encoded = [encode_record(r, "train") for r in recs]
    mv = [r.millivolts() for r in recs]
    results = {}
    # int16 + per-lead gain/baseline (what the shards hold), decoded to float32 mV
    t = time.perf_counter()
    for e in encoded:
        decode_sample(e.members)
    results["int16+gain"] = (np.mean([len(e.members["signal.npy"]) for e in encoded]),
                             n / (time.perf_counter() - t), 0.0)
    for name, dt in (("float32", np.float32), ("float16", np.float16)):
        blobs = []
        for m in mv:
            b = io.BytesIO()
            np.save(b, m.astype(dt), allow_pickle=False)
            blobs.append(b.getvalue())
        t = time.perf_counter()
        dec = [np.load(io.BytesIO(b), allow_pickle=False).astype(np.float32) for b in blobs]
        rate = n / (time.perf_counter() - t)
        err = max(float(np.abs(d - m).max()) for d, m in zip(dec, mv))
        results[name] = (np.mean([len(b) for b in blobs]), rate, err)
    print("1. storage dtype (signal member only; decode = to float32 mV incl. meta for int16)")
    for name, (nbytes, rate, err) in results.items():
        print(f"   {name:11s} {nbytes / 1024:8.1f} KiB/record  decode {rate:8.0f} rec/s  "
              f"max |error| {err:.2e} mV")
    _ = wfdb


def wfdb_sequential(records: list[Path]) -> float:
    import wfdb
    t = time.perf_counter()
    for r in records:
        wfdb.rdrecord(str(r))
    return len(records) / (time.perf_counter() - t)


class _WfdbDataset:
    def __init__(self, records: list[Path]) -> None:
        self.records = [str(r) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        import wfdb
        return wfdb.rdrecord(self.records[i]).p_signal.T.astype(np.float32)


def wfdb_dataloader(records: list[Path], workers: int) -> float:
    import torch.utils.data
    dl = torch.utils.data.DataLoader(_WfdbDataset(records), batch_size=None,
                                     num_workers=workers)
    t = time.perf_counter()
    n = sum(1 for _ in dl)
    return n / (time.perf_counter() - t)


def shards_dataloader(url: str, workers: int) -> tuple[int, float]:
    from clef_platform.loader import LoaderConfig, record_loader
    n = 0
    t = time.perf_counter()
    for split in ("train", "val", "test"):
        cfg = LoaderConfig(url, split, mode="exact", rank=0, world_size=1)
        try:
            n += sum(1 for _ in record_loader(cfg, num_workers=workers))
        except ValueError as e:   # a split with fewer shards than readers at this size
            n += sum(1 for _ in record_loader(cfg, num_workers=1))
            print(f"   ({split}: {e.__class__.__name__}; read with 1 worker)")
    return n, n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=10, help="LUDB copies (200 records each)")
    ap.add_argument("--shard-mb", type=float, default=32.0)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp_path = Path(tmp)
        records = replicate(ludb_source(), tmp_path / "src", args.copies)
        print(f"records: {len(records)} (LUDB x {args.copies}, symlinked)")
        bench_dtypes(records)

        floor = wfdb_sequential(records)
        import ray

        from clef_platform.ingest.adapters import get_adapter
        from clef_platform.ingest.pipeline import IngestConfig, run_ingest

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        dest = tmp_path / "ds"
        cfg = IngestConfig("wfdb", tmp_path / "src", str(dest),
                           shard_bytes=int(args.shard_mb * 2**20), workers=2)
        summary = run_ingest(cfg, list_refs=lambda corpus, source: get_adapter(
            "wfdb", record_id="relative_path").list_records(source))
        ray.shutdown()
        assert summary.balanced and summary.stored == len(records), summary.lines()
        print(f"2. ingest, 2 Ray workers: {summary.records_per_s:.0f} records/s "
              f"(end to end incl. listing, probe, manifest; {summary.shards} shards, "
              f"{summary.bytes / 2**20:.0f} MiB)")
        print(f"   floor, wfdb.rdrecord sequential: {floor:.0f} records/s  "
              f"ratio ingest/floor = {summary.records_per_s / floor:.2f}")

        n, shard_rate = shards_dataloader(str(dest), 2)
        wf_seq = wfdb_sequential(records)
        wf_dl = wfdb_dataloader(records, 2)
        print(f"3. training read, shards via webdataset + DataLoader(2 workers): "
              f"{shard_rate:.0f} samples/s ({n} samples)")
        print(f"   WFDB files, wfdb.rdrecord sequential: {wf_seq:.0f} samples/s  "
              f"ratio = {shard_rate / wf_seq:.2f}")
        print(f"   WFDB files, DataLoader(2 workers):     {wf_dl:.0f} samples/s  "
              f"ratio = {shard_rate / wf_dl:.2f}")


if __name__ == "__main__":
    main()
