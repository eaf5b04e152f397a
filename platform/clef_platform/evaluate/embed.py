"""Frozen-encoder embeddings of an ingested dataset, in parallel with Ray Data.

Pipeline: one block per shard -> `flat_map` reads a shard and cuts each record's evaluation view
(lead, centre window, band-pass, z-score; `data.eval_views`), dropping records excluded for leakage ->
`map_batches(_Embedder)` on an actor pool: each actor builds the encoder once (from a
`ModelSpec`) and embeds batches of [B, 1, window] under `torch.inference_mode()`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from clef_platform.evaluate.data import Dataset, crop_window, eval_views, iter_shard, meta_json
from clef_platform.storage import open_store

log = logging.getLogger(__name__)

EMBED_VERSION = "eval-view/1:centre-crop,bandpass-0.67-40,zscore"   # bump when eval_window or the pipeline changes the embeddings


@dataclass(frozen=True)
class ModelSpec:
    """Where an encoder comes from; a plain value so Ray can ship it to actors.

    kind "export": `location` is an export folder URL (clef_model.save_encoder layout);
    "random": a freshly initialised encoder of `scale` after torch.manual_seed(seed);
    "released": a released CLEF Lightning checkpoint file at `location` of `scale`.
    """

    kind: str
    scale: str | None = None
    location: str | None = None
    seed: int = 0
    step: int | None = None       # training step of an export (None for baselines)

    @property
    def checkpoint_id(self) -> str:
        if self.kind == "export":
            return str(self.location).rstrip("/")
        if self.kind == "random":
            return f"random:{self.scale}:seed{self.seed}"
        if self.kind == "released":
            return f"released:{self.scale}:{self.location}"
        raise ValueError(f"unknown model kind {self.kind!r}")

    def build(self):
        import torch

        from clef_model import build_encoder, load_encoder, load_released_checkpoint

        if self.kind == "random":
            torch.manual_seed(self.seed)
            return build_encoder(self.scale).eval()
        if self.kind == "released":
            return load_released_checkpoint(self.location, self.scale)
        if self.kind == "export":
            loc = str(self.location)
            if "://" not in loc or loc.startswith("file://"):
                return load_encoder(loc[len("file://"):] if loc.startswith("file://") else loc)
            # Remote export: copy its two files to a temporary folder first.
            from clef_model.checkpoint import CONFIG_FILE, WEIGHTS_FILE

            store = open_store(loc)
            with tempfile.TemporaryDirectory(prefix="clef-export-") as d:
                for name in (CONFIG_FILE, WEIGHTS_FILE):
                    with open(os.path.join(d, name), "wb") as f:
                        f.write(store.get_bytes(name))
                return load_encoder(d)
        raise ValueError(f"unknown model kind {self.kind!r}")


def export_scale(location: str) -> str | None:
    """The scale named in an export's config.json."""
    from clef_model.checkpoint import CONFIG_FILE

    store = open_store(location)
    return json.loads(store.get_bytes(CONFIG_FILE)).get("scale")


@dataclass
class Embeddings:
    keys: list[str]
    records: list[dict[str, Any]]     # key, record_id, patient_id, corpus, split, meta (labels)
    X: np.ndarray                     # float32 [N, D]
    n_excluded: int                   # records left out because the checkpoint trained on them
    seconds: float

    @property
    def patient_ids(self) -> np.ndarray:
        return np.array([r.get("patient_id") or r["key"] for r in self.records])


def _shard_views(row: dict[str, Any], store_url: str, lead_index: int, window: int,
                 exclude_keys: frozenset[str], exclude_hashes: frozenset[str]
                 ) -> list[dict[str, Any]]:
    """flat_map: a shard key -> one row per kept record (ids, labels JSON, view)."""
    import torch

    torch.set_num_threads(1)    # the FFT band-pass is ~20x slower oversubscribed on small hosts
    store = open_store(store_url)
    out, windows = [], []
    for rec in iter_shard(store, row["shard"]):
        sha = (rec.get("meta") or {}).get("sha256")
        if rec["key"] in exclude_keys or rec["record_id"] in exclude_keys \
                or sha in exclude_hashes:
            continue
        out.append({"key": rec["key"], "meta_json": meta_json(rec),
                    "lead_present": bool(rec["lead_mask"][lead_index])})
        windows.append(crop_window(rec["signal"][lead_index], window))
    if out:
        views = eval_views(np.stack(windows))      # one batched band-pass per shard
        for r, v in zip(out, views):
            r["x"] = v
    return out


class _Embedder:
    """Actor: holds one encoder; embeds batches of views."""

    def __init__(self, spec: ModelSpec, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = spec.build()
        self.torch = torch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.torch.from_numpy(np.ascontiguousarray(np.stack(batch["x"]), dtype=np.float32))
        with self.torch.inference_mode():
            z = self.model(x.unsqueeze(1)).float().numpy()
        return {"key": batch["key"], "meta_json": batch["meta_json"],
                "lead_present": batch["lead_present"], "embedding": z}


def default_actors() -> int:
    import ray

    cpus = int(ray.available_resources().get("CPU", 1) or 1)
    return max(1, min(4, cpus))


def extract(dataset: Dataset, spec: ModelSpec, lead_index: int, window: int,
            exclude_hashes: frozenset[str] = frozenset(), actors: int | None = None,
            batch_size: int = 32, threads_per_actor: int = 1) -> Embeddings:
    """Embeddings of every record of `dataset` not excluded for leakage (sorted by key)."""
    import ray

    t0 = time.perf_counter()
    exclude_keys, n_excluded = dataset.excluded_keys(exclude_hashes)
    shards = dataset.shard_keys
    if not shards:
        raise ValueError(f"{dataset.url}: no shards")
    actors = actors or default_actors()
    ds = ray.data.from_items([{"shard": k} for k in shards], override_num_blocks=len(shards))
    ds = ds.flat_map(_shard_views, fn_kwargs=dict(
        store_url=dataset.store.url, lead_index=lead_index, window=window,
        exclude_keys=frozenset(exclude_keys), exclude_hashes=exclude_hashes), num_cpus=0.25)
    ds = ds.map_batches(_Embedder, fn_constructor_kwargs={"spec": spec,
                                                          "threads": threads_per_actor},
                        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
                        num_cpus=threads_per_actor * 0.75, batch_format="numpy")
    rows = ds.take_all()
    rows.sort(key=lambda r: r["key"])
    missing_lead = [r["key"] for r in rows if not r["lead_present"]]
    if missing_lead:
        log.info("%s: %d record(s) without a usable lead %d left out",
                 dataset.url, len(missing_lead), lead_index)
    rows = [r for r in rows if r["lead_present"]]
    records = [json.loads(r["meta_json"]) for r in rows]
    X = (np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])
         if rows else np.zeros((0, 0), np.float32))
    secs = time.perf_counter() - t0
    log.info("embedded %d records of %s with %s in %.1fs (%d excluded for leakage)",
             len(rows), dataset.url, spec.checkpoint_id, secs, n_excluded)
    return Embeddings(keys=[r["key"] for r in records], records=records, X=X,
                      n_excluded=n_excluded, seconds=secs)
