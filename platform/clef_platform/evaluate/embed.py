"""Frozen-encoder embeddings of an ingested dataset, in parallel with Ray Data.

Pipeline: one block per shard -> `flat_map` reads a shard through the verified reader
(`layout.shards.read_shard`: the shard's size and SHA-256 against the shard index before any
record, its record count, and each record's signal SHA-256 unless `verify_records` is off) and
crops each record's lead window, dropping records excluded for leakage ->
`map_batches(_Embedder)` on an actor pool: each actor builds the encoder once (from a
`ModelSpec`), makes the evaluation views of a batch (band-pass, z-score; `data.eval_views`) and
embeds them as [B, 1, window] under `torch.inference_mode()`.

A damaged shard fails the whole extraction with a `DatasetError` naming it: no embedding, so no
result, is made from part of a dataset.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clef_platform.evaluate.data import crop_window, eval_views, meta_json
from clef_platform.layout.dataset import Dataset, ShardInfo
from clef_platform.layout.errors import DatasetError
from clef_platform.storage import open_store

log = logging.getLogger(__name__)

EMBED_VERSION = "eval-view/1:centre-crop,bandpass-0.67-40,zscore"   # bump when eval_window or the pipeline changes the embeddings


@dataclass(frozen=True)
class ModelSpec:
    """Where an encoder comes from; a plain value so Ray can ship it to actors.

    kind "export": `location` is an export URL (`<run>/exports/step_<N>`, layout.export),
    loaded through its marker with every file verified; `digest` is the marker's digest.
    "random": a freshly initialised encoder of `scale` after torch.manual_seed(seed);
    "released": a released CLEF Lightning checkpoint file at `location` of `scale`.
    """

    kind: str
    scale: str | None = None
    location: str | None = None
    seed: int = 0
    step: int | None = None       # training step of an export (None for baselines)
    digest: str = ""              # ExportMarker.digest of an export
    lineage: str = "checked"      # "none": scored without lineage (leakage not checked)

    @property
    def checkpoint_id(self) -> str:
        if self.kind == "export":
            return str(self.location).rstrip("/")
        if self.kind == "random":
            return f"random:{self.scale}:seed{self.seed}"
        if self.kind == "released":
            return f"released:{self.scale}:{self.location}"
        raise ValueError(f"unknown model kind {self.kind!r}")

    @property
    def identity(self) -> str:
        """What names the weights in a result's key: the export digest, or the baseline id."""
        return self.digest if self.kind == "export" else self.checkpoint_id

    def build(self):
        import torch

        from clef_model import build_encoder, load_released_checkpoint
        from clef_platform.layout.export import load_export

        if self.kind == "random":
            torch.manual_seed(self.seed)
            return build_encoder(self.scale).eval()
        if self.kind == "released":
            return load_released_checkpoint(self.location, self.scale)
        if self.kind == "export":
            return load_export(str(self.location))
        raise ValueError(f"unknown model kind {self.kind!r}")


@dataclass
class Embeddings:
    keys: list[str]
    records: list[dict[str, Any]]     # key, record_id, patient_id, corpus, split, meta (labels)
    X: np.ndarray                     # float32 [N, D]
    n_excluded: int                   # records left out because the run trained on them
    seconds: float

    @property
    def patient_ids(self) -> np.ndarray:
        return np.array([r.get("patient_id") or r["key"] for r in self.records])


def _shard_views(row: dict[str, Any], store_url: str, lead_index: int, window: int,
                 exclude_keys: frozenset[str], verify_records: bool) -> list[dict[str, Any]]:
    """flat_map: a shard (its index row) -> one row per kept record (ids, labels JSON, the
    cropped window). No torch here: Ray Data cancels the other read tasks when one fails (a
    damaged shard), and a cancellation inside `import torch` leaves that worker unable to import
    it again; the actors, which are discarded on failure, do the band-pass."""
    from clef_platform.layout.shards import read_shard

    info = ShardInfo(**row)
    out = []
    try:
        for rec in read_shard(open_store(store_url), info, verify_shard=True,
                              verify_records=verify_records):
            if rec["key"] in exclude_keys:
                continue
            out.append({"key": rec["key"], "meta_json": meta_json(rec),
                        "lead_present": bool(rec["lead_mask"][lead_index]),
                        "x": crop_window(rec["signal"][lead_index], window)})
    except DatasetError as e:
        # ShardError / RecordError take two arguments and do not survive pickling (Ray ships
        # the error to the driver): the same one-line message as a plain DatasetError.
        raise DatasetError(f"{store_url}: {e}") from None
    return out


class _Embedder:
    """Actor: holds one encoder; turns batches of cropped windows into evaluation views
    (band-pass + z-score, batched) and embeds them."""

    def __init__(self, spec: ModelSpec, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = spec.build()
        self.torch = torch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        views = eval_views(np.stack(batch["x"]))
        x = self.torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32))
        with self.torch.inference_mode():
            z = self.model(x.unsqueeze(1)).float().numpy()
        return {"key": batch["key"], "meta_json": batch["meta_json"],
                "lead_present": batch["lead_present"], "embedding": z}


def default_actors() -> int:
    import ray

    cpus = int(ray.available_resources().get("CPU", 1) or 1)
    return max(1, min(4, cpus))


def dataset_error(e: BaseException) -> DatasetError | None:
    """The DatasetError a Ray Data failure carries (RayTaskError(DatasetError) holds the
    original as `cause`), as one line; None for any other failure."""
    cause = getattr(e, "cause", None)
    if isinstance(e, DatasetError) and isinstance(cause, DatasetError):
        # Ray appends its retry advice to the message: keep our line only.
        return DatasetError(str(cause.args[0] if cause.args else cause).split("\n")[0])
    return None


def excluded_keys(dataset: Dataset, exclude_hashes: frozenset[str]) -> frozenset[str]:
    """Keys of the records of `dataset` the run trained on: their canonical-signal SHA-256 is
    in the exclusion set, or their source files' (so a whole record is excluded when the run
    trained on its windows, and its windows when it trained on the whole record)."""
    if not exclude_hashes:
        return frozenset()
    df = dataset.frame()
    hit = df["sha256"].isin(exclude_hashes) | df["source_sha256"].isin(exclude_hashes)
    return frozenset(df.loc[hit, "key"])



@dataclass
class Windows:
    """The cropped lead windows of a dataset's records (what fine-tuning trains on)."""

    records: list[dict[str, Any]]     # as Embeddings.records
    X: np.ndarray                     # float32 [N, window], cropped, not yet band-passed
    n_excluded: int
    seconds: float

    @property
    def patient_ids(self) -> np.ndarray:
        return np.array([r.get("patient_id") or r["key"] for r in self.records])


def _shards(dataset: Dataset, lead_index: int, window: int, exclude_keys: frozenset[str],
            verify_records: bool):
    """Ray Data: one block per shard -> one row per kept record (verified reads)."""
    import ray

    shards = [asdict(s) for _, s in sorted(dataset.shards.items())]
    if not shards:
        raise DatasetError(f"{dataset.url}: no shards")
    ds = ray.data.from_items(shards, override_num_blocks=len(shards))
    ds = ds.flat_map(_shard_views, fn_kwargs=dict(
        store_url=dataset.store.url, lead_index=lead_index, window=window,
        exclude_keys=exclude_keys, verify_records=verify_records), num_cpus=0.25)
    # Raise what a task raised (RayTaskError(DatasetError)), not Ray Data's UserCodeException
    # wrapper, so a damaged shard reaches the caller as the DatasetError naming it.
    ds.context.raise_original_map_exception = True
    return ds


def _take_all(ds) -> list[dict[str, Any]]:
    try:
        rows = ds.take_all()
    except Exception as e:
        err = dataset_error(e)
        if err is None:
            raise
        raise err from None
    return sorted(rows, key=lambda r: r["key"])


def _usable(rows: list[dict[str, Any]], dataset: Dataset, lead_index: int):
    missing_lead = [r["key"] for r in rows if not r["lead_present"]]
    if missing_lead:
        log.info("%s: %d record(s) without a usable lead %d left out",
                 dataset.url, len(missing_lead), lead_index)
    return [r for r in rows if r["lead_present"]]


def read_windows(dataset: Dataset, lead_index: int, window: int,
                 exclude_hashes: frozenset[str] = frozenset(),
                 verify_records: bool = True) -> Windows:
    """The cropped windows of every record of `dataset` not excluded for leakage (by key);
    the same verified read as `extract`. A damaged shard raises DatasetError naming it."""
    t0 = time.perf_counter()
    excluded = excluded_keys(dataset, exclude_hashes)
    rows = _usable(_take_all(_shards(dataset, lead_index, window, excluded,
                                     verify_records)), dataset, lead_index)
    X = (np.stack([np.asarray(r["x"], dtype=np.float32) for r in rows]) if rows
         else np.zeros((0, window), np.float32))
    return Windows(records=[json.loads(r["meta_json"]) for r in rows], X=X,
                   n_excluded=len(excluded),
                   seconds=time.perf_counter() - t0)


def extract(dataset: Dataset, spec: ModelSpec, lead_index: int, window: int,
            exclude_hashes: frozenset[str] = frozenset(), actors: int | None = None,
            batch_size: int = 32, threads_per_actor: int = 1,
            verify_records: bool = True) -> Embeddings:
    """Embeddings of every record of `dataset` not excluded for leakage (sorted by key).

    A damaged shard raises DatasetError naming it."""
    import ray

    t0 = time.perf_counter()
    excluded = excluded_keys(dataset, exclude_hashes)
    n_excluded = len(excluded)
    actors = actors or default_actors()
    ds = _shards(dataset, lead_index, window, excluded, verify_records)
    ds = ds.map_batches(_Embedder, fn_constructor_kwargs={"spec": spec,
                                                          "threads": threads_per_actor},
                        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
                        num_cpus=threads_per_actor * 0.75, batch_format="numpy")
    rows = _usable(_take_all(ds), dataset, lead_index)
    records = [json.loads(r["meta_json"]) for r in rows]
    X = (np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])
         if rows else np.zeros((0, 0), np.float32))
    secs = time.perf_counter() - t0
    log.info("embedded %d records of %s with %s in %.1fs (%d excluded for leakage)",
             len(rows), dataset.url, spec.checkpoint_id, secs, n_excluded)
    return Embeddings(keys=[r["key"] for r in records], records=records, X=X,
                      n_excluded=n_excluded, seconds=secs)
