"""Feature store benchmark on the MIMIC-IV demo tables replicated to a larger population.

Prints, in one run:
  1. historical retrieval rows/s for N (patient, time) keys through RiskClient (one Feast
     point-in-time join + SCORE2), and the per-job cache's rows/s for the same keys afterwards
  2. online latency p50/p99 of 512-key batches (views + SCORE2 on-demand view) from SQLite and
     from Redis (a redis-server started on 127.0.0.1, stopped by PID)
  3. the share of a CLEF-small training step (CPU, batch B, forward+backward) that feature access
     costs when the trainer prefetches once and looks up each batch in the cache

    .venv/bin/python benchmarks/bench_features.py [--keys 100000] [--copies 50] [--batches 30]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "platform")]


def replicated_observations(copies: int) -> pd.DataFrame:
    from clef_platform.features.mimic_etl import run_mimic_etl

    obs = run_mimic_etl(REPO / "data" / "mimic-iv-demo" / "hosp").observations
    parts = [obs.assign(patient_id=obs["patient_id"] + f"-{c}") for c in range(copies)]
    return pd.concat(parts, ignore_index=True)


def sample_keys(obs: pd.DataFrame, n: int, rng) -> list[tuple[str, pd.Timestamp]]:
    timed = obs[obs["known_at"] > pd.Timestamp("1971-01-01", tz="UTC")]
    span = timed.groupby("patient_id")["known_at"].agg(["min", "max"])
    idx = rng.integers(0, len(span), n)
    lo = span["min"].to_numpy()[idx].astype("datetime64[s]").astype(np.int64)
    hi = span["max"].to_numpy()[idx].astype("datetime64[s]").astype(np.int64)
    t = lo + (rng.random(n) * (hi - lo + 86400 * 365)).astype(np.int64)
    pids = span.index.to_numpy()[idx].astype(object)
    unknown = rng.random(n) < 0.05           # some keys the store has never seen
    pids[unknown] = [f"unknown/{i}" for i in range(int(unknown.sum()))]
    return list(zip(pids, pd.to_datetime(t, unit="s", utc=True)))


def start_redis() -> tuple[subprocess.Popen, int] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import redis
    conn = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            conn.ping()
            return proc, port
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    return None


def online_latency(client, patients: list[str], at, batches: int, rng) -> tuple[float, float]:
    times = []
    client.online(list(rng.choice(patients, 512, replace=False)), at=at)     # warm-up
    for _ in range(batches):
        ids = list(rng.choice(patients, 512, replace=False))
        t0 = time.perf_counter()
        client.online(ids, at=at)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def step_share(client, keys, batch: int, steps: int) -> str:
    try:
        import torch

        from clef_model import build_encoder
    except Exception as exc:        # encoder not importable: report why, no figure
        return f"n/a ({exc})"
    torch.manual_seed(0)
    enc = build_encoder("small")
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 5000)
    step_t, feat_t = [], []
    for i in range(steps + 1):
        sel = keys[i * batch:(i + 1) * batch]
        t0 = time.perf_counter()
        risk, missing = client.risk_arrays([k[0] for k in sel], [k[1] for k in sel])
        torch.from_numpy(risk), torch.from_numpy(missing)
        t1 = time.perf_counter()
        loss = enc(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i:                               # first step warms up
            feat_t.append(t1 - t0)
            step_t.append(t2 - t0)
    share = 100 * np.mean(feat_t) / np.mean(step_t)
    return (f"{share:.3f} % (feature lookup {1e3 * np.mean(feat_t):.2f} ms of a "
            f"{1e3 * np.mean(step_t):.0f} ms step, batch {batch})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--copies", type=int, default=50, help="demo population replicas")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--step-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(0)

    from clef_platform.features.build import build_from_observations
    from clef_platform.features.client import RiskClient
    from clef_platform.features.config import FeatureStoreConfig

    obs = replicated_observations(args.copies)
    patients = sorted(obs["patient_id"].unique())
    keys = sample_keys(obs, args.keys, rng)
    print(f"population: {len(patients)} patients, {len(obs)} observations "
          f"({args.copies} copies of the MIMIC-IV demo)")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        repo = build_from_observations(Path(tmp) / "sqlite", obs, FeatureStoreConfig())
        print(f"build (tables, apply, materialise), SQLite: {time.perf_counter() - t0:.1f} s")
        client = RiskClient(repo)
        t0 = time.perf_counter()
        client.prefetch(keys)
        dt = time.perf_counter() - t0
        print(f"1. historical retrieval: {len(keys)} keys in {dt:.2f} s = "
              f"{len(keys) / dt:,.0f} rows/s (feast_dropped={client.stats.feast_dropped})")
        t0 = time.perf_counter()
        client.lookup(keys)
        dt = time.perf_counter() - t0
        print(f"   cached lookup of the same keys: {len(keys) / dt:,.0f} rows/s")
        at = pd.Timestamp(client.info.end)
        p50, p99 = online_latency(client, patients, at, args.batches, rng)
        print(f"2. online 512-key batches, SQLite: p50 {1e3 * p50:.1f} ms, p99 {1e3 * p99:.1f} ms")
        server = start_redis()
        if server is None:
            print("   Redis: skipped (no redis-server; run infra/setup/install_redis.sh)")
        else:
            proc, port = server
            try:
                cfg = FeatureStoreConfig(online_store="redis",
                                         redis_connection=f"127.0.0.1:{port}")
                rrepo = build_from_observations(Path(tmp) / "redis", obs, cfg)
                p50, p99 = online_latency(RiskClient(rrepo), patients, at, args.batches, rng)
                print(f"   online 512-key batches, Redis: p50 {1e3 * p50:.1f} ms, "
                      f"p99 {1e3 * p99:.1f} ms")
            finally:
                proc.terminate()
                proc.wait(timeout=10)
        print("3. feature access share of a CLEF-small CPU training step: "
              + step_share(client, keys, args.step_batch, args.steps))


if __name__ == "__main__":
    main()
