"""Evaluation benchmark on the bundled real data (CPU).

Prints, in one run:
  1. embedding throughput (ECGs/s) of CLEF-small and CLEF-medium: the encoder alone
     (torch, 1 thread and all threads, batch 32 of [1, 5000]) and the whole Ray Data extraction
     of LUDB (200 records: shard read, band-pass + z-score, actor pool; actor start included)
  2. the cost of record-level verification: the same extraction with each record's signal
     SHA-256 checked (verify_records, evaluation's default) and without (shard SHA-256 only)
  3. wall time of a full evaluation pass of one checkpoint (CLEF-small export) on the bundled
     tasks (LUDB rhythm, sex, age; CinC 2021 SNOMED), without and then with the random baseline

    .venv/bin/python benchmarks/bench_eval.py [--actors 2] [--num-cpus 4] [--skip-medium]

Ingests LUDB and the CinC sample into a temporary folder and commits one export through
layout.export first (not timed).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path


def forward_throughput(scale: str, threads: int, batch: int = 32, reps: int = 3) -> float:
    import torch

    from clef_model import build_encoder

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = build_encoder(scale).eval()
    x = torch.randn(batch, 1, 5000)
    with torch.inference_mode():
        m(x)
        t = time.perf_counter()
        for _ in range(reps):
            m(x)
        dt = time.perf_counter() - t
    return batch * reps / dt


def ingest(corpus: str, source: Path, dest: Path) -> str:
    from clef_platform.ingest.pipeline import IngestConfig, run_ingest

    run_ingest(IngestConfig(corpus=corpus, source=source.resolve(), dest=str(dest),
                            shard_bytes=2_000_000, workers=2, cpus_per_worker=0.5))
    return str(dest)


def commit_export(run: Path, tmp: Path) -> str:
    """A seeded CLEF-small committed as the run's step-1 export through layout.export. No
    lineage (it trained on nothing), so the pass scores the same records as before lineage
    existed; the pass runs with allow_no_lineage."""
    import torch

    from clef_model import build_encoder, save_encoder
    from clef_platform.layout.export import write_export

    torch.manual_seed(1)
    folder = save_encoder(build_encoder("small"), tmp / "export")
    url, _ = write_export(folder, str(run.parent), run.name, 1, method="clef", scale="small",
                          recipe="bench", config_digest="bench", training_data=())
    return url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--num-cpus", type=float, default=4)
    p.add_argument("--skip-medium", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.basicConfig(level=logging.WARNING)
    import ray
    import torch

    from clef_platform.evaluate.embed import ModelSpec, extract
    from clef_platform.evaluate.passes import EvalConfig, evaluate_pass
    from clef_platform.evaluate.probes import ProbeConfig
    from clef_platform.evaluate.tasks import load_tasks
    from clef_platform.layout.dataset import open_dataset
    from clef_platform.layout.results import ResultsStore

    repo = Path(__file__).resolve().parents[1]

    scales = ["small"] + ([] if a.skip_medium else ["medium"])
    ncores = os.cpu_count() or 1
    print(f"== 1. embedding throughput (CPU, {ncores} cores, torch {torch.__version__})")
    for s in scales:
        one = forward_throughput(s, 1)
        allt = forward_throughput(s, ncores)
        print(f"  {s:6s} encoder forward: {one:7.1f} ECGs/s (1 thread), {allt:7.1f} ECGs/s "
              f"({ncores} threads)")

    ray.init(address="local", num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        root = Path(tmp) / "data"
        ingest("ludb", repo / "data" / "ludb" / "data", root / "ludb")
        ingest("cinc2021", repo / "data" / "cinc2021-sample", root / "cinc2021")
        ds = open_dataset(str(root / "ludb"))
        for s in scales:
            for attempt in ("cold", "warm"):
                t = time.perf_counter()
                emb = extract(ds, ModelSpec("random", s, seed=0), 0, 5000, actors=a.actors)
                dt = time.perf_counter() - t
                print(f"  {s:6s} Ray Data extraction of LUDB ({attempt}): {len(emb.keys)} ECGs in "
                      f"{dt:6.1f} s = {len(emb.keys) / dt:6.1f} ECGs/s ({a.actors} actors)")

        print("== 2. record-level verification")
        from clef_platform.layout.shards import read_shard

        read = {}
        for verify in (False, True, False, True):     # the reader alone, in this process
            t = time.perf_counter()
            n = sum(1 for info in ds.shards.values()
                    for _ in read_shard(ds.store, info, verify_shard=True, verify_records=verify))
            read[verify] = max(read.get(verify, 0.0), n / (time.perf_counter() - t))
        print(f"  read_shard alone: {read[False]:7.1f} records/s shard checks only, "
              f"{read[True]:7.1f} records/s with record checks (ratio {read[True] / read[False]:.3f})")
        print("  embedding extraction (CLEF-small, LUDB, warm, best of 2 each):")
        rates = {}
        for verify in (False, True, False, True):
            t = time.perf_counter()
            emb = extract(ds, ModelSpec("random", "small", seed=0), 0, 5000, actors=a.actors,
                          verify_records=verify)
            rate = len(emb.keys) / (time.perf_counter() - t)
            rates[verify] = max(rates.get(verify, 0.0), rate)
        for verify in (False, True):
            print(f"    verify_records={str(verify):5s}: {rates[verify]:6.1f} ECGs/s")
        print(f"    ratio on/off: {rates[True] / rates[False]:.3f}")

        print("== 3. full evaluation of one checkpoint on the bundled tasks")
        tasks = [t for t in load_tasks() if t.dataset in ("ludb", "cinc2021")]
        print("  tasks:", ", ".join(t.name for t in tasks))
        run = Path(tmp) / "runs" / "bench"
        commit_export(run, Path(tmp))
        for baseline in (False, True):
            cfg = EvalConfig(run_url=str(run), tasks=tasks, data_root=str(root),
                             results_url=str(Path(tmp) / f"results-{baseline}"),
                             random_baseline=baseline, actors=a.actors, probe=ProbeConfig(),
                             allow_no_lineage=True)
            t = time.perf_counter()
            s = evaluate_pass(cfg)
            dt = time.perf_counter() - t
            what = "export + random baseline" if baseline else "export only"
            print(f"  {what:26s}: {dt:6.1f} s wall, {s.added} results, {len(s.failed)} failed")
        df = ResultsStore(str(Path(tmp) / "results-True")).read()
        for _, r in df.sort_values(["task", "kind"]).iterrows():
            print(f"    {r['task']:12s} {r['kind']:7s} {r['metric']} {r['value']:.3f} "
                  f"[{r['lower']:.3f}, {r['upper']:.3f}] n={r['n_test']}")
    ray.shutdown()


if __name__ == "__main__":
    main()
