"""(b) View-generation throughput per core: batched make_views vs. a per-sample baseline.

The baseline does per item what the CLEF reference loader does: pick the leads, scipy filtfilt
of each view separately, one augmentation (a noise segment scaled to 0.1 mV RMS, same bank and
kind probabilities), the random mask, a z-score, in a Python loop; then collate. Both run on the
bundled LUDB records already in memory, on one thread. The last line is the batched pipeline with
the `paper` view profile (scipy filtfilt band-pass, docs/reproducing.md). Usage:

    .venv/bin/python benchmarks/bench_views.py [--batch 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import scipy.signal
import torch

from clef_model import noise
from clef_model.leads import N_LEADS, lead_index
from clef_model.views import ViewConfig, make_views, record_seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_ludb() -> tuple[np.ndarray, list[str]]:
    import wfdb

    paths = sorted(glob.glob(os.path.join(ROOT, "data/ludb/data/*.hea")),
                   key=lambda p: int(os.path.basename(p)[:-4]))
    out = []
    for p in paths:
        rec = wfdb.rdrecord(p[:-4])
        x = np.zeros((N_LEADS, rec.sig_len), np.float32)
        for j, name in enumerate(rec.sig_name):
            x[lead_index(name)] = rec.p_signal[:, j]
        out.append(x)
    return np.stack(out), [os.path.basename(p)[:-4] for p in paths]


def baseline_item(sig: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  ba, bank: list[np.ndarray], cfg: ViewConfig) -> list[np.ndarray]:
    """One record, the way a per-item Dataset.__getitem__ does it."""
    usable = np.flatnonzero(mask)
    l1 = rng.choice(usable)
    if rng.random() < cfg.p_same_lead or len(usable) == 1:
        l2 = l1
    else:
        l2 = rng.choice(usable[usable != l1])
    off = rng.integers(0, sig.shape[1] - cfg.length + 1)
    views = []
    for lead in (l1, l2):
        x = scipy.signal.filtfilt(*ba, sig[lead, off:off + cfg.length])
        kind = rng.choice(len(cfg.noise_probs), p=cfg.noise_probs)
        if kind:
            comps = [0, 1, 2] if kind == 4 else [kind - 1]
            n = np.zeros(cfg.length)
            for k in comps:
                rec = bank[k]
                ch, o = rng.integers(0, rec.shape[0]), rng.integers(0, rec.shape[1] - cfg.length + 1)
                n += rec[ch, o:o + cfg.length] * (rng.uniform(0.2, 1.0) if kind == 4 else 1.0)
            x = x + n * (cfg.noise_rms_mv / np.sqrt(np.mean(n * n)))
        if rng.random() < cfg.p_mask:
            span = int(round(rng.uniform(*cfg.mask_frac) * cfg.length))
            s = rng.integers(0, cfg.length - span + 1)
            x[s:s + span] = 0.0
        views.append(((x - x.mean()) / (x.std() + cfg.eps)).astype(np.float32))
    return views


def run_baseline(signals, masks, cfg, bank, seconds):
    ba = scipy.signal.butter(cfg.butter_order, list(cfg.band), btype="band", fs=cfg.fs)
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(len(signals)):
            v = baseline_item(signals[i], masks[i], rng, ba, bank, cfg)
            # collate, as a DataLoader would
            if i % 64 == 0:
                torch.from_numpy(np.stack(v))
            n += 1
    return n / (time.perf_counter() - t0)


def run_batched(signals, masks, keys, cfg, batch, seconds):
    x, m = torch.from_numpy(signals), torch.from_numpy(masks)
    make_views(x[:batch], m[:batch], record_seeds(cfg.seed, keys[:batch], 0), cfg)  # warm caches
    n, epoch, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in range(0, len(x), batch):
            seeds = record_seeds(cfg.seed, keys[s:s + batch], epoch)  # included: loaders do it too
            v1, v2 = make_views(x[s:s + batch], m[s:s + batch], seeds, cfg)
            n += v1.shape[0]
        epoch += 1
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 200])
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = ViewConfig()
    signals, keys = load_ludb()
    masks = np.ones(signals.shape[:2], bool)
    bank = [r.numpy() for r in noise.cached_bank(None, cfg.fs, cfg.seed, "cpu").recordings]
    print(f"LUDB: {len(signals)} records {signals.shape[1:]}, 1 thread, views of {cfg.length}")
    base = run_baseline(signals, masks, cfg, bank, args.seconds)
    print(f"per-sample baseline (filtfilt per view, loop): {base:9.1f} records/s "
          f"({2 * base:.1f} views/s)")
    for b in args.batch:
        ours = run_batched(signals, masks, keys, cfg, b, args.seconds)
        print(f"batched make_views, batch {b:4d}:              {ours:9.1f} records/s "
              f"({2 * ours:.1f} views/s)  ratio {ours / base:.1f}x")
    # view profile paper: the same batched pipeline with the release's filtfilt band-pass
    paper = ViewConfig(profile="paper")
    b = args.batch[0]
    ours = run_batched(signals, masks, keys, paper, b, args.seconds)
    print(f"make_views profile paper (filtfilt), batch {b:4d}: {ours:9.1f} records/s "
          f"({2 * ours:.1f} views/s)  ratio {ours / base:.1f}x")


if __name__ == "__main__":
    main()
