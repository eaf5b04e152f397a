"""Reading an ingested dataset for evaluation, and the leakage filter.

An ingested dataset (clef_platform.ingest) is a folder or prefix in the object store with
`manifest.parquet` at its root (one row per stored record: record_id, patient_id, corpus, split,
shard, sha256, age, sex, labels, ...) and WebDataset tar shards of `<key>.meta.json` +
`<key>.signal.npy` samples (clef_platform.layout.shards).

Leakage: a checkpoint's pretraining manifest lists the records it trained on by `sha256` of the
canonical signal; every record of a probe dataset whose sha256 is in it is excluded from every
probe (and counted in the report).
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import pandas as pd

from clef_platform.storage import ObjectStore, open_store

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"


def join_url(root: str, name: str) -> str:
    """`name` as is when it is a URL or an absolute path, else `root/name`."""
    if "://" in name or Path(name).is_absolute():
        return name
    return f"{str(root).rstrip('/')}/{name}"


def split_url(url: str) -> tuple[ObjectStore, str]:
    """An object URL -> (store of its parent, key): works for paths, file:// and s3://."""
    url = str(url).rstrip("/")
    if url.startswith("s3://"):
        parent, _, leaf = url.rpartition("/")
        if parent == "s3:/":
            raise ValueError(f"{url}: expected s3://bucket/.../object")
        return open_store(parent), leaf
    if url.startswith("file://"):
        url = url[len("file://"):]
    p = Path(url)
    return open_store(p.parent), p.name


def read_table(url: str) -> pd.DataFrame:
    """A Parquet, CSV or JSON-lines table from a path, file:// or s3:// URL."""
    store, key = split_url(url)
    data = store.get_bytes(key)
    suffix = PurePosixPath(key).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(data))
    if suffix == ".csv":
        return pd.read_csv(io.BytesIO(data))
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(io.BytesIO(data), lines=True)
    raise ValueError(f"{url}: expected .parquet, .csv or .jsonl")


def pretraining_hashes(url: str | None) -> frozenset[str]:
    """The sha256 values a checkpoint was pretrained on (empty when no manifest is given)."""
    if not url:
        return frozenset()
    df = read_table(url)
    if "sha256" not in df.columns:
        raise ValueError(f"pretraining manifest {url} has no 'sha256' column "
                         f"(columns: {list(df.columns)})")
    return frozenset(str(s) for s in df["sha256"].dropna())


@dataclass
class Dataset:
    url: str
    store: ObjectStore
    manifest: pd.DataFrame

    @property
    def shard_keys(self) -> list[str]:
        from clef_platform.layout.dataset import shard_key as shard_object_key

        return [shard_object_key(s) for s in sorted({str(s) for s in
                                                     self.manifest["shard"].dropna()})]

    def excluded_keys(self, hashes: frozenset[str]) -> tuple[set[str], int]:
        """Record keys whose sha256 is in `hashes`, and how many records that is."""
        if not hashes:
            return set(), 0
        m = self.manifest
        hit = m["sha256"].astype(str).isin(hashes)
        col = "key" if "key" in m.columns else "record_id"
        return {str(k) for k in m.loc[hit, col]}, int(hit.sum())


def dataset_exists(url: str) -> bool:
    try:
        return open_store(url).exists(MANIFEST)
    except Exception:       # an unreachable bucket reads as "not there" for task selection
        return False


def open_dataset(url: str) -> Dataset:
    store = open_store(url)
    if not store.exists(MANIFEST):
        raise FileNotFoundError(f"{url}: no {MANIFEST} (not an ingested dataset)")
    manifest = pd.read_parquet(io.BytesIO(store.get_bytes(MANIFEST)))
    if "sha256" not in manifest.columns:
        raise ValueError(f"{url}/{MANIFEST} has no sha256 column; cannot check leakage")
    return Dataset(url=url, store=store, manifest=manifest)


def iter_shard(store: ObjectStore, key: str) -> Iterator[dict[str, Any]]:
    """Canonical record dicts (docs/architecture.md) of one shard, in stored order."""
    from clef_platform.layout.shards import decode_sample

    with store.open(key) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        current: str | None = None
        sample: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            base = PurePosixPath(member.name).name
            skey, _, suffix = base.partition(".")
            if current is not None and skey != current:
                yield decode_sample(sample)
                sample = {}
            current = skey
            sample[suffix] = tar.extractfile(member).read()
        if sample:
            yield decode_sample(sample)


def crop_window(lead_signal: np.ndarray, window: int) -> np.ndarray:
    """The centre `window` samples of one lead (zero-padded on the right, after removing the
    mean, when the record is shorter)."""
    x = np.asarray(lead_signal, dtype=np.float32)
    if x.shape[0] > window:
        start = (x.shape[0] - window) // 2
        return np.ascontiguousarray(x[start:start + window])
    return np.pad(x - x.mean(), (0, window - x.shape[0])).astype(np.float32)


def eval_views(windows: np.ndarray) -> np.ndarray:
    """The deterministic evaluation view of cropped windows [N, window]: the pretraining views'
    0.67-40 Hz zero-phase band-pass (`clef_model.views.bandpass`, same code path as make_views)
    and per-view z-score (eps 1e-6), with no augmentation (no noise, no masking, fixed crop)."""
    import torch

    from clef_model.views import ViewConfig, bandpass

    cfg = ViewConfig()
    if len(windows) == 0:
        return np.zeros((0, windows.shape[-1] if windows.ndim == 2 else 0), np.float32)
    x = bandpass(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)), cfg)
    x = x - x.mean(-1, keepdim=True)
    std = torch.linalg.vector_norm(x, dim=-1, keepdim=True) / (x.shape[-1] ** 0.5)
    return (x / (std + cfg.eps)).numpy().astype(np.float32)


def eval_window(lead_signal: np.ndarray, window: int) -> np.ndarray:
    """One record's evaluation view (crop_window then eval_views)."""
    return eval_views(crop_window(lead_signal, window)[None])[0]


def meta_json(record: dict[str, Any]) -> str:
    """The label-bearing part of a record as JSON (what tasks compute labels from)."""
    meta = dict(record.get("meta") or {})
    for k in ("gain", "baseline", "leads"):
        meta.pop(k, None)
    keep = {k: record.get(k) for k in ("key", "record_id", "patient_id", "corpus", "split",
                                        "ecg_time")}
    return json.dumps({**keep, "meta": meta}, sort_keys=True, default=str)
