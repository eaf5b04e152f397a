"""Pretraining throughput on CPU: CLEF-small with 1 and 2 Ray Train workers (DeepSpeed ZeRO-1,
gloo), the loader's own ceiling (samples/s with the model removed), their ratio, and the time
to the first step.

    .venv/bin/python benchmarks/bench_train.py [--steps 12] [--batch 16] [--out out/bench_train]

The dataset is LUDB ingested into small shards under --out (built once and reused) with a Feast
repository from its manifest. Throughput is the mean over the steps after the first. The loader
ceiling runs the training data path in one process exactly as a worker does (shard stream ->
crop -> risk lookup -> batched CLEF views, DataLoader workers as configured) with no model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_data(out: Path) -> dict:
    data, repo = out / "ludb", out / "features"
    if not (data / "manifest.parquet").exists():
        from clef_platform.ingest.pipeline import IngestConfig, run_ingest

        run_ingest(IngestConfig(corpus="ludb", source=REPO / "data/ludb/data", dest=str(data),
                                shard_bytes=1_000_000, workers=2, cpus_per_worker=0.5))
    if not (repo / "feature_store.yaml").exists():
        from clef_platform.features.build import build_feature_store
        from clef_platform.features.config import FeatureStoreConfig

        build_feature_store(repo, FeatureStoreConfig(), None, str(data / "manifest.parquet"),
                            do_materialise=False)
    return {"data": str(data), "features": str(repo)}


def cfg_for(ds, out, workers, batch, steps, run):
    from clef_platform.train.config import PretrainConfig

    return PretrainConfig.from_args([
        "--scale", "small", "--method", "clef", "--data", ds["data"], "--features", ds["features"],
        "--storage", str(out / "runs"), "--run-name", run, "--workers", str(workers),
        "--batch-per-worker", str(batch), "--steps", str(steps), "--checkpoint-every",
        str(steps), "--zero-stage", "1", "--cpus-per-worker", "1",
        "--data.loader_workers", "1", "--address", "local"])


def loader_ceiling(cfg, table, batches: int) -> dict:
    """samples/s of one worker's data path without the model (records only, and with views)."""
    import torch

    from clef_model.views import ViewConfig, make_views
    from clef_platform.train import data as D

    vcfg = ViewConfig(length=cfg.data.view_length, seed=cfg.seed)
    it = D.make_batches(cfg, 0, 1, table, vcfg, start_micro=0, steps_per_epoch=10)
    next(it)  # worker start-up and the first shard are not throughput
    n, t0 = 0, time.perf_counter()
    t_views = 0.0
    for _ in range(batches):
        b = next(it)
        tv = time.perf_counter()
        v1, v2 = make_views(b["signals"], b["lead_mask"], b["seeds"], vcfg)
        t_views += time.perf_counter() - tv
        n += len(b["keys"])
    total = time.perf_counter() - t0
    return {"records_per_s": n / (total - t_views), "records_and_views_per_s": n / total,
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=16, help="records per worker per step")
    p.add_argument("--out", type=Path, default=REPO / "out/bench_train")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/clef-torch-ext")
    import shutil

    import ray

    from clef_platform.train import data as D
    from clef_platform.train.run import run_pretraining

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    ds = build_data(a.out)
    shutil.rmtree(a.out / "runs", ignore_errors=True)
    results: dict = {"machine": f"{os.cpu_count()} CPUs", "batch_per_worker": a.batch,
                     "steps": a.steps, "view_length": 5000, "scale": "small"}
    for workers in (1, 2):
        cfg = cfg_for(ds, a.out, workers, a.batch, a.steps, f"bench_w{workers}")
        res = run_pretraining(cfg, progress_interval=30)
        m = res.metrics
        results[f"train_{workers}w"] = {
            "samples_per_s": m["samples_per_s"], "first_step_s": m["first_step_s"],
            "time_to_first_step_s": m["time_to_first_step_s"],
            "worker_start_to_first_step_s": m["first_step_end_unix"] - m["train_start_unix"],
            "final_loss": m["loss"]}
        print(f"train {workers} worker(s): {m['samples_per_s']:.1f} samples/s (global), "
              f"first step {m['first_step_s']:.1f} s, time to first step "
              f"{m['time_to_first_step_s']:.1f} s from the driver call", flush=True)
    cfg = cfg_for(ds, a.out, 1, a.batch, a.steps, "bench_loader")
    table = D.fetch_risk_table(cfg.data.data, cfg.data.split, cfg.data.features)
    ceiling = loader_ceiling(cfg, table, batches=a.steps)
    results["loader_1_reader"] = ceiling
    per_worker = results["train_2w"]["samples_per_s"] / 2
    results["loader_ceiling_over_training_per_worker"] = {
        "records_only": ceiling["records_per_s"] / per_worker,
        "records_and_views": ceiling["records_and_views_per_s"] / per_worker}
    print(f"loader ceiling (1 reader, no model): {ceiling['records_per_s']:.1f} records/s, "
          f"{ceiling['records_and_views_per_s']:.1f} with CLEF views", flush=True)
    print(f"ratio loader ceiling / training per worker (2 workers): "
          f"{results['loader_ceiling_over_training_per_worker']['records_only']:.1f}x records, "
          f"{results['loader_ceiling_over_training_per_worker']['records_and_views']:.1f}x "
          f"with views", flush=True)
    print(json.dumps(results, indent=1))
    ray.shutdown()
    return results


if __name__ == "__main__":
    main()
