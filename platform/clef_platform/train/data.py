"""Training data per worker: shard stream -> crop -> risk/missing -> (views) -> batches.

- Records come from `clef_platform.loader.record_dataset` (the split's shards, resampled with
  replacement and split across (rank, DataLoader worker) readers).
- Risk and missing fraction come from a `RiskTable` built once per job on the driver with the
  feature store's `RiskClient` for every record of the split (one historical retrieval) and
  shipped to the workers through Ray's object store; batches look their records up by key.
- Views of a record depend only on (seed, record key, epoch): `clef_model.views.record_seed`.
  "epoch" is the optimiser step divided by the steps one pass over the split takes, so a record
  gets the same views whatever worker layout or batch it lands in.
- `views_on="device"` ships the (cropped) 12-lead signals and makes views in the training step
  (batched, on the GPU when there is one); `views_on="loader"` makes them in the DataLoader
  worker processes and ships two [B, 1, L] views.
- `order="epoch"` (`--epochs`): exact passes over the split. Pass e reads the split's shards in
  order through a shuffle buffer seeded by (seed, e) (identical on every rank, so every rank sees
  one sequence; a buffer at least as large as the split is a uniform permutation), cuts it into
  global batches and each rank takes its slice: every record once per epoch. The last partial
  batch is kept, as the release's DataLoader does (drop_last=False), split as evenly as the ranks
  allow; only when it would leave a rank with fewer than 2 records (BatchNorm cannot train on
  one) are those at most 2 x workers - 1 records left out of that epoch (`epoch_plan`). Costs
  world x reading, like "global".
- Several datasets (`--data A --data B --data-weights 3,1`): every sample is drawn from
  dataset i with probability w_i / sum(w) (a seeded choice per sample) over one record stream
  per dataset. With `order="stream"` each dataset's stream is the loader's resampled shards
  and the choice is seeded by (seed, start micro-batch, rank, DataLoader worker); with
  `order="epoch"` an epoch is as many samples as the datasets' training records together,
  the choice is seeded by (seed, epoch) (the same on every rank, which takes its slice) and
  each dataset's stream is exact passes, each shuffled by (seed, epoch, pass), started afresh
  every epoch: a dataset drawn more often than it has records is read again (a new
  shuffle), one drawn less often is only partly seen that epoch. Each record carries the index
  of its dataset ("dataset") and batches list them ("sources").
- `order="global"`: every rank reads the same deterministic record sequence (exact pass over the
  sorted shards, no shuffle, cycling) and takes its slice of each global batch, so the global
  batch is identical for any number of workers. Costs world x reading; for checks, not speed.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from clef_model.views import ViewConfig, make_views, record_seed

log = logging.getLogger(__name__)


class NotEnoughShardsForReaders(ValueError):
    """Fewer shards in the split than (workers x DataLoader workers) readers."""


# ---- risk ------------------------------------------------------------------------------------

@dataclass
class RiskTable:
    """Per record key: SCORE2 risk and missing fraction, as the feature store returned them."""

    keys: list[str]
    risk: np.ndarray      # float32 [N]
    missing: np.ndarray   # float32 [N]

    def __post_init__(self) -> None:
        self._index = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        try:
            idx = np.fromiter((self._index[k] for k in keys), dtype=np.int64, count=len(keys))
        except KeyError as e:
            raise KeyError(f"record {e.args[0]!r} is not in the job's risk table (was the "
                           f"dataset re-ingested after the job started?)") from None
        return self.risk[idx], self.missing[idx]

    @classmethod
    def concat(cls, tables: list["RiskTable"]) -> "RiskTable":
        """One table over several datasets' records (keys are namespaced by corpus; a key in
        two datasets is refused: a lookup could not say whose risk it is)."""
        keys = [k for t in tables for k in t.keys]
        if len(set(keys)) != len(keys):
            dup = next(k for k, n in collections.Counter(keys).items() if n > 1)
            raise ValueError(f"record key {dup!r} is in more than one --data dataset (the same "
                             f"corpus ingested twice?); give each dataset once")
        return cls(keys, np.concatenate([t.risk for t in tables]).astype(np.float32),
                   np.concatenate([t.missing for t in tables]).astype(np.float32))

    @classmethod
    def unknown(cls, keys: list[str]) -> "RiskTable":
        """No metadata: risk 0, all inputs missing (SimCLR/BYOL/MoCo ignore it)."""
        n = len(keys)
        return cls(list(keys), np.zeros(n, np.float32), np.ones(n, np.float32))


def read_split_manifest(data_url: str, split: str):
    """The manifest rows of one split (pandas), sorted by key."""
    from clef_platform.layout.dataset import open_dataset

    dataset = open_dataset(data_url)
    dataset.split_shards(split)          # a split with no records: an error naming the splits
    return dataset.frame(split)


def fetch_risk_table(data_url: str, split: str, features: str, client=None) -> RiskTable:
    """One RiskClient call for every record of the split (driver side, once per job)."""
    df = read_split_manifest(data_url, split)
    keys = df["key"].tolist()
    if not features and client is None:
        return RiskTable.unknown(keys)
    if client is None:
        from clef_platform.features.client import RiskClient

        client = RiskClient(features)
    risk, missing = client.risk_arrays(df["patient_id"].tolist(), df["ecg_time"].fillna("").tolist())
    table = RiskTable(keys, np.asarray(risk, np.float32), np.asarray(missing, np.float32))
    log.info("risk table: %d records, risk mean %.4f, missing mean %.3f (one feature-store call)",
             len(table), float(np.nanmean(table.risk)), float(np.mean(table.missing)))
    return table


def fetch_risk_tables(data_urls: list[str], split: str, features: str,
                      client=None) -> RiskTable:
    """The job's risk table over every dataset's training records (one call per dataset)."""
    return RiskTable.concat([fetch_risk_table(u, split, features, client) for u in data_urls])


def resolve_risk_table(ref) -> RiskTable:
    """The table from a Ray ObjectRef (driver put it once) or the table itself."""
    if ref is None:
        raise ValueError("no risk table passed to the training loop")
    if isinstance(ref, RiskTable):
        return ref
    import ray

    return ray.get(ref)


# ---- batches ----------------------------------------------------------------------------------

def crop(signal: np.ndarray, length: int, seed: int) -> np.ndarray:
    """[12, T] -> [12, length]: a window whose start derives from the record's seed (records
    shorter than `length` are zero-padded on the right; ingestion quarantines < 10 s)."""
    t = signal.shape[1]
    if t == length:
        return signal
    if t < length:
        out = np.zeros((signal.shape[0], length), dtype=signal.dtype)
        out[:, :t] = signal
        return out
    start = (seed >> 11) % (t - length + 1)
    return signal[:, start:start + length]


def collate(records: list[dict], micro: int, *, seed: int, accum: int, steps_per_epoch: int,
            length: int, risk_table: RiskTable, vcfg: ViewConfig | None) -> dict[str, Any]:
    """Records of one micro-batch -> tensors; views too when `vcfg` is given."""
    step = micro // accum
    epoch = step // max(1, steps_per_epoch)
    keys = [r["key"] for r in records]
    seeds = [record_seed(seed, k, epoch) for k in keys]
    signals = torch.from_numpy(np.stack([crop(np.asarray(r["signal"], np.float32), length, s)
                                         for r, s in zip(records, seeds)]))
    lead_mask = torch.from_numpy(np.stack([np.asarray(r["lead_mask"], bool) for r in records]))
    risk, missing = risk_table.lookup(keys)
    out = {"keys": keys, "micro": micro, "epoch": epoch,
           # index (in --data order) of the dataset each record was drawn from
           "sources": [int(r.get("dataset", 0)) for r in records],
           "seeds": torch.tensor(seeds, dtype=torch.int64),
           "risk": torch.from_numpy(np.ascontiguousarray(risk)),
           "missing": torch.from_numpy(np.ascontiguousarray(missing))}
    if vcfg is not None:
        out["v1"], out["v2"] = make_views(signals, lead_mask, out["seeds"], vcfg)
    else:
        out["signals"], out["lead_mask"] = signals, lead_mask
    return out


class _Batches(torch.utils.data.IterableDataset):
    """Batches of one rank, built inside its DataLoader workers.

    DataLoader workers hand out batches round-robin, so worker w of W produces micro-batches
    start + w, start + w + W, ...; each batch knows its micro index (hence step and epoch).
    """

    def __init__(self, cfg, rank: int, world: int, risk_table: RiskTable, vcfg: ViewConfig,
                 start_micro: int, steps_per_epoch: int, n_records: int = 0):
        self.cfg, self.rank, self.world, self.n_records = cfg, rank, world, n_records
        self.risk_table, self.vcfg = risk_table, vcfg
        self.start_micro, self.steps_per_epoch = start_micro, steps_per_epoch

    def _records(self, wid: int, nw: int) -> Iterator[dict]:
        from clef_platform.loader import LoaderConfig, record_dataset

        c = self.cfg
        checks = dict(verify=c.data.verify, on_damage=c.data.on_damage)
        datasets = c.datasets
        if len(datasets) > 1:      # order "stream" (config refuses "global" with several)
            streams = [iter(record_dataset(
                LoaderConfig(url=url, split=c.data.split, mode="train",
                             shuffle_buffer=c.data.shuffle_buffer, seed=c.seed,
                             epoch=self.start_micro, rank=self.rank, world_size=self.world,
                             **checks), on_skip=self._damaged.append)) for url, _ in datasets]
            rng = np.random.default_rng([c.seed, self.start_micro, self.rank, wid, _MIX_TAG])
            while True:
                yield from mix(streams, [w for _, w in datasets], rng, 4096)
        if c.data.order == "global":
            # Every rank, one reader: the whole split in shard/key order, again and again.
            lc = LoaderConfig(url=c.data.data, split=c.data.split, mode="exact", shuffle_buffer=0,
                              rank=0, world_size=1, **checks)
            while True:
                yield from record_dataset(lc, on_skip=self._damaged.append)
        lc = LoaderConfig(url=c.data.data, split=c.data.split, mode="train",
                          shuffle_buffer=c.data.shuffle_buffer,
                          # the epoch of the shard sampler moves on after a restart, so a resumed
                          # run does not replay the records it already saw
                          seed=c.seed, epoch=self.start_micro, rank=self.rank, world_size=self.world,
                          **checks)
        yield from record_dataset(lc, on_skip=self._damaged.append)

    def _with_damage(self, batch: dict) -> dict:
        """Hand the damage skipped since the last batch to the training loop (which counts it:
        this runs in a DataLoader worker process)."""
        batch["damaged"] = [str(e) for e in self._damaged]
        self._damaged.clear()
        return batch

    def __iter__(self):
        self._damaged: list = []
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        c = self.cfg
        b = c.batch_per_worker
        vcfg = self.vcfg if c.data.views_on == "loader" else None
        kw = dict(seed=c.seed, accum=c.optim.grad_accum, steps_per_epoch=self.steps_per_epoch,
                  length=c.data.view_length, risk_table=self.risk_table, vcfg=vcfg)
        micro = self.start_micro + wid
        if c.data.order == "epoch":
            yield from self._epochs(kw)
            return
        it = self._records(wid, nw)
        if c.data.order == "global":
            # One reader per rank (make_batches caps DataLoader workers at 1). Global batch g is
            # records [g*B*world, (g+1)*B*world) of the sequence; this rank takes its slice.
            gb, g, buf = b * self.world, 0, []
            for rec in it:
                buf.append(rec)
                if len(buf) == gb:
                    if g >= self.start_micro:
                        yield self._with_damage(
                            collate(buf[self.rank * b:(self.rank + 1) * b], g, **kw))
                    buf, g = [], g + 1
            return
        while True:
            recs = [next(it) for _ in range(b)]
            yield self._with_damage(collate(recs, micro, **kw))
            micro += nw


    def _epochs(self, kw: dict):
        """order="epoch": pass after pass, each shuffled by (seed, epoch); see the module doc."""
        from clef_platform.loader import LoaderConfig, record_dataset

        c, b = self.cfg, self.cfg.batch_per_worker
        gb = b * self.world
        spe, keep_last = epoch_plan(self.n_records, gb, self.world)
        epoch = self.start_micro // spe
        while True:
            g, buf = epoch * spe, []
            for rec in self._epoch_records(epoch):
                buf.append(rec)
                if len(buf) == gb:
                    if g >= self.start_micro:
                        yield self._with_damage(collate(buf[self.rank * b:(self.rank + 1) * b],
                                                        g, **kw))
                    buf, g = [], g + 1
            if buf and keep_last and g >= self.start_micro:
                lo, hi = rank_slice(len(buf), self.world, self.rank)
                yield self._with_damage(collate(buf[lo:hi], g, **kw))
            epoch += 1


    def _epoch_records(self, epoch: int) -> Iterator[dict]:
        """The record sequence of one epoch, identical on every rank."""
        from clef_platform.loader import LoaderConfig, record_dataset

        c = self.cfg

        def one_pass(url: str, pass_epoch: int):
            lc = LoaderConfig(url=url, split=c.data.split, mode="exact",
                              shuffle_buffer=c.data.shuffle_buffer, seed=c.seed,
                              epoch=pass_epoch, rank=0, world_size=1, verify=c.data.verify,
                              on_damage=c.data.on_damage)
            return record_dataset(lc, on_skip=self._damaged.append)

        datasets = c.datasets
        if len(datasets) == 1:
            yield from one_pass(datasets[0][0], epoch)
            return

        def passes(url: str):
            # pass p of epoch e is shuffled by (seed, e * _PASSES + p): a fresh order per pass
            for p in itertools.count():
                yield from one_pass(url, epoch * _PASSES + p)

        rng = np.random.default_rng([c.seed, epoch, _MIX_TAG])
        yield from mix([passes(u) for u, _ in datasets], [w for _, w in datasets], rng,
                       self.n_records)


# Mixed datasets: a constant mixed into the choice's seed (so it never equals another seeded
# stream of the same seed), and the loader epochs reserved per training epoch for the passes
# a dataset drawn more often than it has records needs.
_MIX_TAG = 0x6D6978
_PASSES = 1 << 16


def mix(streams: list[Iterator[dict]], weights: list[float], rng: np.random.Generator,
        n: int) -> Iterator[dict]:
    """`n` records, each from stream i with probability weights[i] / sum(weights) (a seeded
    choice per sample), tagged with "dataset": i."""
    p = np.asarray(weights, np.float64)
    for i in rng.choice(len(streams), size=n, p=p / p.sum()):
        rec = next(streams[i])
        rec["dataset"] = int(i)
        yield rec


def epoch_plan(n_records: int, global_batch: int, world: int) -> tuple[int, bool]:
    """(optimiser steps per epoch, whether the last partial batch is kept) for order="epoch"."""
    full, rest = divmod(n_records, global_batch)
    keep = rest > 0 and rest // world >= 2
    if full + keep == 0:
        raise ValueError(f"an epoch of {n_records} records gives no batch of at least 2 "
                         f"records per worker for {world} workers: use a smaller "
                         f"--batch-per-worker or fewer --workers")
    return full + keep, keep


def rank_slice(n: int, world: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of rank's share of n records, as even as possible (earlier ranks get the extra)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def check_readers(cfg, n_shards: int, url: str | None = None) -> None:
    """Every dataset (`url`, default the only one) needs a shard per reader."""
    readers = cfg.cluster.workers * max(1, cfg.data.loader_workers)
    if n_shards < readers:
        raise NotEnoughShardsForReaders(
            f"{n_shards} shard(s) in split {cfg.data.split!r} of {url or cfg.data.data} for "
            f"{readers} "
            f"readers ({cfg.cluster.workers} workers x {max(1, cfg.data.loader_workers)} "
            f"DataLoader workers): each reader needs its own shard. Use fewer workers or "
            f"--data.loader_workers, or re-ingest with a smaller --shard-bytes")


def make_batches(cfg, rank: int, world: int, risk_table: RiskTable, vcfg: ViewConfig,
                 start_micro: int, steps_per_epoch: int, n_records: int = 0) -> Iterator[dict]:
    """An endless iterator of this rank's micro-batches, starting at micro-batch `start_micro`
    (`n_records`: the split's records, for order="epoch")."""
    ds = _Batches(cfg, rank, world, risk_table, vcfg, start_micro, steps_per_epoch, n_records)
    nw = max(0, cfg.data.loader_workers)
    if cfg.data.order in ("global", "epoch"):
        nw = min(nw, 1)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=nw, persistent_workers=False,
        prefetch_factor=2 if nw else None,
        # forkserver, not fork: a Ray worker runs gRPC and torch threads, and a forked child
        # inherits their locks in whatever state they were (a known deadlock). The server
        # process is started once, single-threaded; workers get the dataset by pickle through
        # their own pipe (never from storage).
        multiprocessing_context="forkserver" if nw else None)
    return iter(loader)


def write_trace(trace_dir: str, rank: int, step: int, micro: int, batch: dict,
                risk: torch.Tensor, missing: torch.Tensor, loss: float,
                views: torch.Tensor | None = None) -> None:
    """Debug trace of what reached the loss (keys, risk, missing): tests compare it with the
    RiskClient. Record keys appear only here, never in metrics."""
    d = Path(trace_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"rank{rank}_step{step}_micro{micro}.json", "w") as f:
        json.dump({"rank": rank, "step": step, "micro": micro, "keys": batch["keys"],
                   "epoch": batch["epoch"], "risk": risk.detach().cpu().tolist(),
                   "missing": missing.detach().cpu().tolist(), "loss": loss,
                   # per record: SHA-256 of its first view (tests: views change with the epoch)
                   "view_sha256": None if views is None else [
                       hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest()
                       for v in views]}, f)


def trace_event(trace_dir: str, rank: int, event: dict) -> None:
    d = Path(trace_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"rank{rank}_events.jsonl", "a") as f:
        f.write(json.dumps(event) + "\n")


def param_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in name order (ranks in sync have equal digests)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def steps_per_epoch(n_records: int, global_batch: int) -> int:
    return max(1, math.ceil(n_records / global_batch))
