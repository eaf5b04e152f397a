"""Fine-tune protocol benchmark on the bundled real data (CPU).

Prints, in one run:
  1. throughput (ECGs/s) of CLEF-small on real LUDB evaluation views (lead I, 5000 samples):
     the frozen-probe path's embedding (encoder in eval mode under inference_mode, batch 32)
     and a fine-tuning step (encoder + linear head, BCE, AdamW, batch 16: forward, backward,
     step), each at 1 torch thread, and their ratio;
  2. wall time of one evaluation pass of a CLEF-small export on LUDB rhythm with each protocol
     (`jobs/evaluate.py`'s code path: Ray Data read, then probes / Ray Train fine-tuning with
     --workers), the fine-tune one with the settings printed (--epochs, --folds: a full
     100-epoch, 5-fold run takes proportionally longer).

    .venv/bin/python benchmarks/bench_finetune.py [--workers 2] [--epochs 5] [--folds 1]

Ingests LUDB into a temporary folder and commits one export through layout.export first (not
timed).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ludb_views(n: int = 64):
    """Evaluation views of the first `n` LUDB records, lead I (the probes' input)."""
    import numpy as np
    import wfdb

    from clef_platform.evaluate.data import crop_window, eval_views

    names = sorted((REPO / "data" / "ludb" / "data").glob("*.hea"), key=lambda p: int(p.stem))
    x = [crop_window(wfdb.rdrecord(str(p.with_suffix("")), channel_names=["i"]).p_signal[:, 0],
                     5000) for p in names[:n]]
    return eval_views(np.stack(x))


def embed_throughput(views, reps: int = 3, batch: int = 32) -> float:
    import torch

    from clef_model import build_encoder

    torch.manual_seed(0)
    m = build_encoder("small").eval()
    x = torch.from_numpy(views[:batch]).unsqueeze(1)
    with torch.inference_mode():
        m(x)
        t = time.perf_counter()
        for _ in range(reps):
            m(x)
        return batch * reps / (time.perf_counter() - t)


def finetune_throughput(views, reps: int = 3, batch: int = 16) -> float:
    import torch

    from clef_model import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("small")
    model = torch.nn.Sequential(enc, torch.nn.Linear(enc.embedding_dim, 1)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.from_numpy(views[:batch]).unsqueeze(1)
    y = (torch.arange(batch) % 2).float()[:, None]

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return batch * reps / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--num-cpus", type=float, default=4)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    torch.set_num_threads(1)
    views = ludb_views()
    emb = embed_throughput(views)
    ft = finetune_throughput(views)
    print("CLEF-small, 1 thread, real LUDB views [1, 5000]:")
    print(f"  frozen-probe embedding (batch 32): {emb:8.1f} ECGs/s")
    print(f"  fine-tuning step (batch 16):       {ft:8.1f} ECGs/s")
    print(f"  fine-tune / embed throughput:      {ft / emb:8.3f}x")

    import ray

    from clef_platform.evaluate.finetune import FineTuneConfig
    from clef_platform.evaluate.passes import EvalConfig, evaluate_pass
    from clef_platform.evaluate.probes import ProbeConfig
    from clef_platform.evaluate.tasks import load_tasks
    from clef_platform.ingest.pipeline import IngestConfig, run_ingest

    from bench_eval import commit_export    # the same seeded CLEF-small export, no lineage

    ray.init(address="local", num_cpus=a.num_cpus, include_dashboard=False,
             log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="clef-bench-ft-") as d:
        root = Path(d)
        run_ingest(IngestConfig(corpus="ludb", source=(REPO / "data/ludb/data").resolve(),
                                dest=str(root / "data" / "ludb"), shard_bytes=2_000_000,
                                workers=2, cpus_per_worker=0.5))
        run = str(root / "runs" / "bench")
        commit_export(Path(run), root)
        tasks = load_tasks(["ludb_rhythm"])
        ftc = FineTuneConfig(max_epochs=a.epochs, folds=a.folds, workers=a.workers,
                             batch_size=16)
        walls = {}
        for protocol in ("linear-probe", "fine-tune"):
            cfg = EvalConfig(run_url=run, tasks=tasks, data_root=str(root / "data"),
                             allow_no_lineage=True, random_baseline=False,
                             probe=ProbeConfig(n_bootstrap=200), retries=0, protocol=protocol,
                             finetune=ftc)
            t = time.perf_counter()
            s = evaluate_pass(cfg, render=False)
            walls[protocol] = time.perf_counter() - t
            assert s.added == 1 and not s.failed, s
    ray.shutdown()
    print("one pass, CLEF-small export, ludb_rhythm (200 records):")
    print(f"  linear-probe (5-fold nested CV):                 {walls['linear-probe']:7.1f} s")
    print(f"  fine-tune ({a.workers} workers, <= {a.epochs} epochs, {a.folds} fold(s), batch 16): "
          f"{walls['fine-tune']:7.1f} s")
    print(f"  fine-tune / linear-probe wall time:              "
          f"{walls['fine-tune'] / walls['linear-probe']:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
