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

Reads are verified (layout.shards.read_shard): `verify="shards"` (the default) checks each whole
shard's size, SHA-256 and record count against the dataset's shard index before its records are
used; `verify="records"` also hashes every record's signal; `verify="none"` trusts the bytes.
What happens on a mismatch is `on_damage`: "fail" raises an error naming the shard (and record),
"skip" leaves the shard (or record) out, logs it and reports it to `on_skip` - never silently.

The shard list comes from the committed dataset (layout.dataset.open_dataset).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np

from clef_platform.digests import stable_int
from clef_platform.layout.dataset import ShardInfo, open_dataset
from clef_platform.layout.errors import DatasetError
from clef_platform.layout.shards import read_shard
from clef_platform.storage import open_store

log = logging.getLogger(__name__)

Mode = Literal["train", "exact"]
VERIFY = ("none", "shards", "records")
ON_DAMAGE = ("fail", "skip")
SkipFn = Callable[[DatasetError], None]


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
    verify: str = "shards"              # none | shards | records (see the module docstring)
    on_damage: str = "fail"             # fail | skip

    def __post_init__(self) -> None:
        if self.verify not in VERIFY:
            raise ValueError(f"verify must be one of {VERIFY}, got {self.verify!r}")
        if self.on_damage not in ON_DAMAGE:
            raise ValueError(f"on_damage must be one of {ON_DAMAGE}, got {self.on_damage!r}")
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


def split_shards(url: str, split: str) -> list[ShardInfo]:
    """The split's shards (name, records, SHA-256), sorted by name."""
    return open_dataset(url).split_shards(split)


def shard_urls(url: str, split: str) -> list[str]:
    """Reader URLs (local paths or `pipe:` commands) of the split's shards, sorted."""
    store = open_store(url)
    return [store.reader_url(s.key) for s in split_shards(url, split)]


def exact_assignment(n_shards: int, reader: int, readers: int) -> list[int]:
    """Shard indices for one reader in an exact pass; raises when a reader would get none."""
    if n_shards < readers:
        raise NotEnoughShards(
            f"exact pass: {n_shards} shards for {readers} readers (world_size x DataLoader "
            f"workers); every reader needs at least one shard. Use fewer ranks/workers, or "
            f"re-ingest with a smaller --shard-bytes")
    return list(range(reader, n_shards, readers))


class _ShardSource:
    """First pipeline stage: yields this reader's shards (ShardInfo), decided at iteration time
    (DataLoader worker identity is only known inside the worker)."""

    def __init__(self, shards: list[ShardInfo], cfg: LoaderConfig, rank: int, world: int) -> None:
        self.shards, self.cfg, self.rank, self.world = shards, cfg, rank, world

    def reader(self) -> tuple[int, int]:
        wid, nworkers = _worker()
        return self.rank * nworkers + wid, self.world * nworkers

    def __call__(self) -> Iterator[ShardInfo]:
        reader, readers = self.reader()
        if self.cfg.mode == "exact":
            for i in exact_assignment(len(self.shards), reader, readers):
                yield self.shards[i]
            return
        rng = random.Random(stable_int("shards", self.cfg.seed, self.cfg.epoch, reader, readers))
        while True:   # resampled: with replacement, endless; the caller bounds the epoch
            yield self.shards[rng.randrange(len(self.shards))]


class _ReadShards:
    """Second stage: verified records of each shard; damage handled by `cfg.on_damage`."""

    def __init__(self, store_url: str, cfg: LoaderConfig, on_skip: SkipFn | None) -> None:
        self.store_url, self.cfg, self.on_skip = store_url, cfg, on_skip

    def __call__(self, shards: Iterator[ShardInfo]) -> Iterator[dict[str, Any]]:
        store = open_store(self.store_url)
        verify_shard = self.cfg.verify != "none"
        verify_records = self.cfg.verify == "records"
        skip = self.cfg.on_damage == "skip"
        for info in shards:
            try:
                yield from read_shard(store, info, verify_shard=verify_shard,
                                      verify_records=verify_records,
                                      on_bad_record=self._skipped if skip else None)
            except DatasetError as e:
                if not skip:
                    raise
                self._skipped(e)

    def _skipped(self, err: DatasetError) -> None:
        log.warning("skipping damaged data (on_damage=skip): %s", err)
        if self.on_skip is not None:
            self.on_skip(err)


class _Shuffle:
    def __init__(self, source: _ShardSource, bufsize: int, cfg: LoaderConfig) -> None:
        self.source, self.bufsize, self.cfg = source, bufsize, cfg

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from webdataset.filters import _shuffle

        reader, readers = self.source.reader()
        rng = random.Random(stable_int("samples", self.cfg.seed, self.cfg.epoch, reader, readers))
        return _shuffle(samples, bufsize=self.bufsize, initial=min(100, self.bufsize), rng=rng)


def record_dataset(cfg: LoaderConfig, on_skip: SkipFn | None = None):
    """A `webdataset.DataPipeline` (a torch IterableDataset) of verified canonical record dicts.

    `on_skip(error)` hears of each shard or record left out under on_damage="skip" (it runs in
    the reading process: a DataLoader worker when there are workers)."""
    import webdataset as wds

    rank, world = (cfg.rank, cfg.world_size) if cfg.rank is not None else _node()
    dataset = open_dataset(cfg.url)
    shards = dataset.split_shards(cfg.split)
    if cfg.mode == "exact" and len(shards) < world:
        exact_assignment(len(shards), 0, world)   # raises the clear error now, not in a worker
    source = _ShardSource(shards, cfg, rank, world)
    stages: list[Callable[..., Any]] = [source, _ReadShards(dataset.store.url, cfg, on_skip)]
    if cfg.buffer > 0:
        stages.append(_Shuffle(source, cfg.buffer, cfg))
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
        exact_assignment(len(split_shards(cfg.url, cfg.split)), 0,
                         (world or 1) * max(1, num_workers))
    if collate_fn is None:
        # batch_size=None: keep each record's numpy arrays (torch would convert them).
        collate_fn = collate_records if batch_size is not None else _identity
    if num_workers:
        # forkserver, not fork, as in training (train/data.py): a caller with Ray's or torch's
        # threads running (a driver, a Ray worker, pytest after a Ray test) would fork their
        # locks mid-use; seen as "SystemError: AST constructor recursion depth mismatch" in a
        # forked worker's np.load
        kwargs.setdefault("multiprocessing_context", "forkserver")
    return torch.utils.data.DataLoader(record_dataset(cfg), batch_size=batch_size,
                                       num_workers=num_workers, collate_fn=collate_fn, **kwargs)


def _identity(x: Any) -> Any:
    return x


# ------------------------------------------------------------------------------- Ray Data

def _ray_shard_records(row: dict[str, Any], store_url: str, verify: str) -> list[dict[str, Any]]:
    info = ShardInfo(row["name"], row["split"], row["records"], row["nbytes"], row["sha256"])
    out = []
    for rec in read_shard(open_store(store_url), info, verify_shard=verify != "none",
                          verify_records=verify == "records"):
        # meta varies by corpus (labels, flags): one JSON column keeps the Arrow schema fixed.
        rec["meta"] = json.dumps(rec["meta"], sort_keys=True)
        out.append(rec)
    return out


def ray_dataset(url: str, split: str, verify: str = "shards"):
    """The split as a `ray.data.Dataset`, one block per shard, read through the same verified
    shard reader as the loader (a damaged shard fails the read, naming it; meta as JSON)."""
    import ray.data

    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {VERIFY}, got {verify!r}")
    dataset = open_dataset(url)
    rows = [{"name": s.name, "split": s.split, "records": s.records, "nbytes": s.nbytes,
             "sha256": s.sha256} for s in dataset.split_shards(split)]
    return ray.data.from_items(rows, override_num_blocks=len(rows)).flat_map(
        _ray_shard_records, fn_kwargs={"store_url": dataset.store.url, "verify": verify})
