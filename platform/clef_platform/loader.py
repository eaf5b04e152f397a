"""Read an ingested dataset: a WebDataset pipeline for training and evaluation, or Ray Data.

    cfg = LoaderConfig(url="s3://bucket/ludb", split="train")          # mode="train"
    loader = record_loader(cfg, num_workers=2)                         # torch DataLoader
    for rec in loader: rec["signal"], rec["lead_mask"], rec["key"], ...

Each record is the dict of docs/architecture.md: key, record_id, patient_id, corpus, ecg_time,
split, signal (float32 mV [12, T]), lead_mask (bool [12]), meta (dict).

Readers are (node rank, DataLoader worker) pairs: `world_size x num_workers` of them.
- mode="train": every reader draws shards with replacement from the whole split, forever (or
  `samples_per_reader` samples), seeded by (seed, epoch, rank, worker): a small corpus feeds
  any number of readers and nothing ever waits for a shard.
- mode="exact": each shard goes to exactly one reader (shards[reader::readers]), each record is
  read once. Fewer shards than readers is an error raised at once, not a hang.

The shard list comes from manifest.parquet, so only committed datasets can be read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np

from clef_platform.layout.dataset import read_manifest
from clef_platform.layout.dataset import shard_key as shard_object_key
from clef_platform.layout.shards import decode_sample
from clef_platform.storage import ObjectStore, S3Store, open_store

log = logging.getLogger(__name__)

Mode = Literal["train", "exact"]


class NotEnoughShards(ValueError):
    """An exact pass needs at least one shard per reader."""


@dataclass(frozen=True)
class LoaderConfig:
    url: str
    split: str
    mode: Mode = "train"
    shuffle_buffer: int | None = None   # default: 1000 in train mode, 0 (off) in exact mode
    seed: int = 0
    epoch: int = 0
    rank: int | None = None             # default: torch.distributed if initialised, else 0
    world_size: int | None = None
    samples_per_reader: int | None = None   # train mode: stop each reader after this many

    def __post_init__(self) -> None:
        if self.mode not in ("train", "exact"):
            raise ValueError(f"mode must be 'train' or 'exact', got {self.mode!r}")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if self.world_size is not None and not 0 <= self.rank < self.world_size:  # type: ignore
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 0:
            raise ValueError("shuffle_buffer must be >= 0")

    @property
    def buffer(self) -> int:
        if self.shuffle_buffer is not None:
            return self.shuffle_buffer
        return 1000 if self.mode == "train" else 0


def _node() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when it is initialised, else (0, 1)."""
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return 0, 1


def _worker() -> tuple[int, int]:
    import torch.utils.data
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def shard_urls(url: str, split: str) -> list[str]:
    """Reader URLs (local paths or `pipe:` commands) of the split's shards, sorted."""
    store = open_store(url)
    return [store.reader_url(shard_object_key(n)) for n in _split_shard_names(store, split)]


def exact_assignment(n_shards: int, reader: int, readers: int) -> list[int]:
    """Shard indices for one reader in an exact pass; raises when a reader would get none."""
    if n_shards < readers:
        raise NotEnoughShards(
            f"exact pass: {n_shards} shards for {readers} readers (world_size x DataLoader "
            f"workers); every reader needs at least one shard. Use fewer ranks/workers, or "
            f"re-ingest with a smaller --shard-bytes")
    return list(range(reader, n_shards, readers))


class _ShardSource:
    """First pipeline stage: yields {"url": ...} for this reader, decided at iteration time
    (DataLoader worker identity is only known inside the worker)."""

    def __init__(self, urls: list[str], cfg: LoaderConfig, rank: int, world: int) -> None:
        self.urls, self.cfg, self.rank, self.world = urls, cfg, rank, world

    def reader(self) -> tuple[int, int]:
        wid, nworkers = _worker()
        return self.rank * nworkers + wid, self.world * nworkers

    def __call__(self) -> Iterator[dict[str, str]]:
        reader, readers = self.reader()
        if self.cfg.mode == "exact":
            for i in exact_assignment(len(self.urls), reader, readers):
                yield {"url": self.urls[i]}
            return
        rng = random.Random(_seed("shards", self.cfg.seed, self.cfg.epoch, reader, readers))
        while True:   # resampled: with replacement, endless; the caller bounds the epoch
            yield {"url": self.urls[rng.randrange(len(self.urls))]}


class _Shuffle:
    def __init__(self, source: _ShardSource, bufsize: int, cfg: LoaderConfig) -> None:
        self.source, self.bufsize, self.cfg = source, bufsize, cfg

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from webdataset.filters import _shuffle

        reader, readers = self.source.reader()
        rng = random.Random(_seed("samples", self.cfg.seed, self.cfg.epoch, reader, readers))
        return _shuffle(samples, bufsize=self.bufsize, initial=min(100, self.bufsize), rng=rng)


def _check_key(sample: dict[str, Any]) -> dict[str, Any]:
    rec = decode_sample(sample)
    if rec["key"] != sample.get("__key__"):
        raise ValueError(f"sample key {sample.get('__key__')!r} != meta key {rec['key']!r} "
                         f"in {sample.get('__url__')}")
    return rec


def record_dataset(cfg: LoaderConfig):
    """A `webdataset.DataPipeline` (a torch IterableDataset) of canonical record dicts."""
    import webdataset as wds

    rank, world = (cfg.rank, cfg.world_size) if cfg.rank is not None else _node()
    urls = shard_urls(cfg.url, cfg.split)
    if cfg.mode == "exact" and len(urls) < world:
        exact_assignment(len(urls), 0, world)   # raises the clear error now, not in a worker
    source = _ShardSource(urls, cfg, rank, world)
    stages: list[Callable[..., Any]] = [source, wds.tarfile_to_samples()]
    if cfg.buffer > 0:
        stages.append(_Shuffle(source, cfg.buffer, cfg))
    stages.append(wds.map(_check_key))
    pipeline = wds.DataPipeline(*stages)
    if cfg.samples_per_reader is not None:
        pipeline = pipeline.with_epoch(cfg.samples_per_reader)
    return pipeline


def collate_records(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack signals and masks when the lengths agree; other fields stay lists."""
    import torch

    out: dict[str, Any] = {k: [r[k] for r in batch] for k in batch[0]}
    if len({r["signal"].shape for r in batch}) == 1:
        out["signal"] = torch.from_numpy(np.stack(out["signal"]))
    out["lead_mask"] = torch.from_numpy(np.stack(out["lead_mask"]))
    return out


def record_loader(cfg: LoaderConfig, *, num_workers: int = 2, batch_size: int | None = None,
                  collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
                  **kwargs: Any):
    """A torch DataLoader over `record_dataset(cfg)`; batch_size=None yields single records."""
    import torch.utils.data

    if cfg.mode == "exact":
        _, world = (cfg.rank, cfg.world_size) if cfg.rank is not None else _node()
        exact_assignment(len(shard_urls(cfg.url, cfg.split)), 0,
                         (world or 1) * max(1, num_workers))
    if collate_fn is None:
        # batch_size=None: keep each record's numpy arrays (torch would convert them).
        collate_fn = collate_records if batch_size is not None else _identity
    return torch.utils.data.DataLoader(record_dataset(cfg), batch_size=batch_size,
                                       num_workers=num_workers, collate_fn=collate_fn, **kwargs)


def _identity(x: Any) -> Any:
    return x


# ------------------------------------------------------------------------------- Ray Data

def _ray_decode(sample: dict[str, Any]) -> dict[str, Any]:
    rec = decode_sample(sample)
    # meta varies by corpus (labels, flags): one JSON column keeps the Arrow schema fixed.
    rec["meta"] = json.dumps(rec["meta"], sort_keys=True)
    return rec


def ray_dataset(url: str, split: str, **read_kwargs: Any):
    """The split as a `ray.data.Dataset` via `ray.data.read_webdataset` (meta as JSON text)."""
    import ray.data

    store = open_store(url)
    names = _split_shard_names(store, split)
    if isinstance(store, S3Store):
        paths = [store.arrow_path(shard_object_key(n)) for n in names]
        read_kwargs.setdefault("filesystem", store.arrow_filesystem())
    else:
        paths = [store.reader_url(shard_object_key(n)) for n in names]
    return ray.data.read_webdataset(paths, decoder=_ray_decode, **read_kwargs)


def _split_shard_names(store: ObjectStore, split: str) -> list[str]:
    table = read_manifest(store).select(["split", "shard"])
    splits = table.column("split").to_pylist()
    names = sorted({s for sp, s in zip(splits, table.column("shard").to_pylist()) if sp == split})
    if not names:
        raise ValueError(f"split {split!r} has no records in {store.url} "
                         f"(splits: {sorted(set(splits))})")
    return names
