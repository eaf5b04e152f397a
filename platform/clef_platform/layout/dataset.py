"""The dataset layout (schema version 3): what an ingest writes and every reader reads.

At a dataset root (a folder or an S3 prefix):

    shards/<split>-<NNNNNN>.tar   WebDataset shards (sample format: layout.shards)
    shards.parquet                the shard index: name, split, records, bytes, SHA-256 of the tar
    quarantine.parquet            one row per rejected record, with its reason
    manifest.parquet              one row per stored record; written LAST: it commits the dataset
    _ingest/claim-<gen>.json      who is writing this destination, with what plan (ingest only)
    _ingest/parts/<shard>.json    one per finished shard: its rows and digest (ingest only)

The dataset digest names a dataset: SHA-256 over its manifest's rows (key, split, shard, record
SHA-256) and its shard index (name, records, SHA-256). Two datasets with the same digest hold the
same records in the same shards, bit for bit; it is stored in manifest.parquet's metadata and
recomputed (and compared) on every read.

Readers go through `open_dataset(url)`, which refuses an uncommitted dataset, an older schema,
or a manifest whose stored digest is not its content's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clef_platform.layout.errors import DatasetError, RecordError, ShardError  # noqa: F401 (re-exported)
from clef_platform.layout.shards import dumps_json
from clef_platform.storage import ObjectStore, open_store

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3   # 3: the window columns
MANIFEST_KEY = "manifest.parquet"
QUARANTINE_KEY = "quarantine.parquet"
SHARD_INDEX_KEY = "shards.parquet"
SHARDS_PREFIX = "shards/"
INGEST_PREFIX = "_ingest/"
CLAIM_PREFIX = "_ingest/claim-"
PARTS_PREFIX = "_ingest/parts/"
_META_VERSION = b"clef.schema_version"
_META_DIGEST = b"clef.dataset_digest"

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("corpus", pa.string()),
    ("record_id", pa.string()),
    ("patient_id", pa.string()),
    ("ecg_time", pa.string()),
    ("age", pa.float64()),
    ("sex", pa.string()),
    ("split", pa.string()),
    ("shard", pa.string()),
    ("sha256", pa.string()),
    ("fs_original", pa.float64()),
    ("n_samples", pa.int64()),
    ("lead_mask", pa.list_(pa.bool_())),
    ("n_leads_usable", pa.int64()),
    ("quality_flags", pa.string()),   # JSON: {lead: [problem, ...]}
    ("native_ids", pa.string()),      # JSON: corpus-native ids (subject_id, study_id, ...)
    ("labels", pa.string()),          # JSON: diagnoses, scp_codes, ...
    # SHA-256 of the source signal files as stored (a window: its parent's); "" when the
    # record was not read from files (leakage exclusion matches windowed and whole forms on it)
    ("source_sha256", pa.string()),
    # A window of a longer record (ingest.windows); null for a whole record
    ("parent_record_id", pa.string()),
    ("window_index", pa.int64()),
    ("window_start_s", pa.float64()),  # offset in the parent record
])

QUARANTINE_SCHEMA = pa.schema([
    ("corpus", pa.string()),
    ("record_id", pa.string()),
    ("patient_id", pa.string()),
    ("source_path", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("shard", pa.string()),           # the shard the record was planned for
])

SHARD_INDEX_SCHEMA = pa.schema([
    ("shard", pa.string()),
    ("split", pa.string()),
    ("records", pa.int64()),
    ("bytes", pa.int64()),
    ("sha256", pa.string()),          # of the whole tar file
])


# ------------------------------------------------------------------------------------ names

def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def shard_key(name: str) -> str:
    return f"{SHARDS_PREFIX}{name}.tar"


def _part_key(shard: str) -> str:
    return f"{PARTS_PREFIX}{shard}.json"


# ------------------------------------------------------------------------------- the rows

@dataclass(frozen=True)
class ShardInfo:
    name: str
    split: str
    records: int
    nbytes: int
    sha256: str

    @property
    def key(self) -> str:
        return shard_key(self.name)


def manifest_row(meta: dict[str, Any], shard: str, source_sha256: str = "") -> dict[str, Any]:
    """A manifest row from a stored sample's meta (and the source digest, which the sample
    itself holds only for a window)."""
    window = meta.get("window") or {}
    return {
        "key": meta["key"], "corpus": meta["corpus"], "record_id": meta["record_id"],
        "patient_id": meta["patient_id"], "ecg_time": meta["ecg_time"], "age": meta["age"],
        "sex": meta["sex"], "split": meta["split"], "shard": shard, "sha256": meta["sha256"],
        "fs_original": meta["fs_original"], "n_samples": meta["n_samples"],
        "lead_mask": meta["lead_mask"], "n_leads_usable": int(sum(meta["lead_mask"])),
        "quality_flags": dumps_json(meta["quality_flags"]),
        "native_ids": dumps_json(meta["native_ids"]), "labels": dumps_json(meta["labels"]),
        "source_sha256": source_sha256 or window.get("parent_sha256", ""),
        "parent_record_id": window.get("parent_record_id"), "window_index": window.get("index"),
        "window_start_s": window.get("start_s"),
    }


def _to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _from_bytes(data: bytes, what: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{what}: not a readable Parquet table ({e})") from None


# ------------------------------------------------------------------------------ shard parts

def write_part(store: ObjectStore, shard: ShardInfo, stored: list[dict[str, Any]],
               quarantined: list[dict[str, Any]]) -> None:
    """The rows of one finished shard (small JSON; written after the shard itself)."""
    body = dumps_json({"shard": shard.name, "split": shard.split, "records": shard.records,
                       "shard_bytes": shard.nbytes, "sha256": shard.sha256,
                       "stored": stored, "quarantined": quarantined})
    store.put_bytes(_part_key(shard.name), body.encode("ascii"))


def read_part(store: ObjectStore, shard: str
              ) -> tuple[ShardInfo, list[dict[str, Any]], list[dict[str, Any]]]:
    """(shard info, manifest rows, quarantine rows) of a finished shard."""
    part = json.loads(store.get_bytes(_part_key(shard)))
    info = ShardInfo(part["shard"], part["split"], int(part["records"]),
                     int(part["shard_bytes"]), part["sha256"])
    return info, part["stored"], part["quarantined"]


def finished_parts(store: ObjectStore) -> set[str]:
    return {k[len(PARTS_PREFIX):-len(".json")] for k in store.list(PARTS_PREFIX)
            if k.endswith(".json")}


# ----------------------------------------------------------------------------------- digest

def dataset_digest(manifest: pa.Table, shards: pa.Table) -> str:
    """SHA-256 over (key, split, shard, sha256) of every record in key order and (shard,
    records, sha256) of every stored shard in name order."""
    h = hashlib.sha256(f"clef-dataset/{SCHEMA_VERSION}\n".encode())
    cols = [manifest.column(c).to_pylist() for c in ("key", "split", "shard", "sha256")]
    for row in sorted(zip(*cols)):
        h.update(("\t".join(row) + "\n").encode())
    h.update(b"--\n")
    scols = [shards.column(c).to_pylist() for c in ("shard", "records", "sha256")]
    for name, n, sha in sorted(zip(*scols)):
        h.update(f"{name}\t{n}\t{sha}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ the commit

def manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def quarantine_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def shard_index_table(shards: list[ShardInfo]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"shard": s.name, "split": s.split, "records": s.records, "bytes": s.nbytes,
          "sha256": s.sha256} for s in sorted(shards, key=lambda s: s.name)],
        schema=SHARD_INDEX_SCHEMA)


def commit_dataset(store: ObjectStore, manifest: pa.Table, quarantine: pa.Table,
                   shards: list[ShardInfo]) -> str:
    """Write the index and quarantine, then the manifest (the commit); returns the digest."""
    manifest = manifest.cast(MANIFEST_SCHEMA)
    index = shard_index_table([s for s in shards if s.records > 0])
    digest = dataset_digest(manifest, index)
    meta = {_META_VERSION: str(SCHEMA_VERSION).encode(), _META_DIGEST: digest.encode()}
    store.put_bytes(SHARD_INDEX_KEY, _to_bytes(index.replace_schema_metadata(meta)))
    store.put_bytes(QUARANTINE_KEY, _to_bytes(quarantine.cast(QUARANTINE_SCHEMA)))
    store.put_bytes(MANIFEST_KEY, _to_bytes(manifest.replace_schema_metadata(meta)))
    return digest


# ------------------------------------------------------------------------------ the reader

@dataclass
class Dataset:
    """A committed dataset: its manifest, shard index and digest, checked against each other."""

    url: str
    store: ObjectStore
    manifest: pa.Table
    shards: dict[str, ShardInfo]
    digest: str

    def split_shards(self, split: str) -> list[ShardInfo]:
        """The split's shards, by name; a split with no records is an error naming the splits."""
        out = [s for n, s in sorted(self.shards.items()) if s.split == split]
        if not out:
            raise DatasetError(f"split {split!r} has no records in {self.url} (splits: "
                               f"{sorted({s.split for s in self.shards.values()})})")
        return out

    def frame(self, split: str | None = None) -> pd.DataFrame:
        """The manifest as pandas (optionally one split), sorted by key."""
        df = self.manifest.to_pandas()
        if split is not None:
            df = df[df["split"] == split]
        return df.sort_values("key").reset_index(drop=True)

    def records(self, split: str | None = None) -> int:
        return sum(s.records for s in self.shards.values() if split is None or s.split == split)


def dataset_exists(url: str) -> bool:
    """Whether `url` holds a committed dataset (storage errors propagate: a bad credential is
    not "not ingested")."""
    return open_store(url).exists(MANIFEST_KEY)


def open_dataset(url: str | ObjectStore) -> Dataset:
    store = url if isinstance(url, ObjectStore) else open_store(url)
    if not store.exists(MANIFEST_KEY):
        raise DatasetError(
            f"{store.full_url(MANIFEST_KEY)} not found: the dataset was never committed "
            f"(ingest not run or not finished; rerun the same ingest command to resume)")
    manifest = _from_bytes(store.get_bytes(MANIFEST_KEY), store.full_url(MANIFEST_KEY))
    meta = manifest.schema.metadata or {}
    version = meta.get(_META_VERSION, b"1").decode()
    if version != str(SCHEMA_VERSION):
        raise DatasetError(f"{store.url}: dataset schema version {version}, this platform reads "
                           f"{SCHEMA_VERSION}; re-ingest it with jobs/ingest.py")
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in manifest.column_names]
    if missing:
        raise DatasetError(f"{store.full_url(MANIFEST_KEY)}: missing columns {missing}")
    if not store.exists(SHARD_INDEX_KEY):
        raise DatasetError(f"{store.full_url(SHARD_INDEX_KEY)} not found: dataset incomplete")
    index = _from_bytes(store.get_bytes(SHARD_INDEX_KEY), store.full_url(SHARD_INDEX_KEY))
    digest = dataset_digest(manifest, index)
    if meta.get(_META_DIGEST, b"").decode() != digest:
        raise DatasetError(f"{store.full_url(MANIFEST_KEY)}: its content does not match its "
                           f"recorded dataset digest (manifest or shard index changed after "
                           f"the commit); re-ingest it")
    shards = {r["shard"]: ShardInfo(r["shard"], r["split"], int(r["records"]), int(r["bytes"]),
                                    r["sha256"]) for r in index.to_pylist()}
    unknown = set(manifest.column("shard").to_pylist()) - set(shards)
    if unknown:
        raise DatasetError(f"{store.url}: manifest names shards not in the index: "
                           f"{sorted(unknown)[:3]}")
    return Dataset(url=store.url, store=store, manifest=manifest, shards=shards, digest=digest)


def read_manifest(store: ObjectStore) -> pa.Table:
    return open_dataset(store).manifest


def read_quarantine(store: ObjectStore) -> pa.Table:
    return _from_bytes(store.get_bytes(QUARANTINE_KEY), store.full_url(QUARANTINE_KEY))


# ------------------------------------------------------------------------ the ingest claim

class DestinationConflict(RuntimeError):
    """The destination holds a different ingest, or another live ingest is writing it."""


@dataclass
class Claim:
    """One ingest's hold on a destination. Generation N is `_ingest/claim-<N>.json`, created
    only if absent, so of two ingests racing for a destination exactly one gets it. The owner
    refreshes its heartbeat; a later ingest with the same plan takes over (generation N+1) only
    when the owner is gone: its process no longer runs on this host, or its heartbeat is older
    than `lease_s` (another host)."""

    store: ObjectStore
    generation: int
    doc: dict[str, Any]
    lease_s: float = 60.0
    _key: str = field(init=False)

    def __post_init__(self) -> None:
        self._key = f"{CLAIM_PREFIX}{self.generation:06d}.json"

    def heartbeat(self) -> None:
        self.doc["heartbeat_unix"] = time.time()
        self.store.put_bytes(self._key, json.dumps(self.doc, sort_keys=True).encode())

    def hold(self) -> "Claim":
        """Refresh the heartbeat from a daemon thread until `release()`."""
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(self.lease_s / 4):
                self.heartbeat()

        threading.Thread(target=beat, name="ingest-claim", daemon=True).start()
        return self

    def release(self) -> None:
        """The ingest ended (done or failed): a rerun may take over at once."""
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        self.doc["released"] = True
        self.heartbeat()


def _owner_alive(doc: dict[str, Any], lease_s: float) -> bool:
    if doc.get("released"):
        return False
    if doc.get("host") == socket.gethostname():
        pid = int(doc.get("pid") or 0)
        if pid == os.getpid():
            return True                 # another ingest of this very process, still running
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return time.time() - float(doc.get("heartbeat_unix", 0)) < lease_s


def claim_destination(store: ObjectStore, plan: dict[str, Any], lease_s: float = 60.0,
                      before_create=None) -> Claim:
    """Claim `store` for an ingest with `plan` (which holds its "fingerprint").

    A destination with data but no claim, a claim for another plan, or a claim whose owner is
    alive is refused with a DestinationConflict naming the reason. `before_create` is a test
    hook called between reading the claims and creating the new one (to force races)."""
    claims = sorted(k for k in store.list(CLAIM_PREFIX) if k.endswith(".json"))
    generation = 0
    if claims:
        last = claims[-1]
        doc = json.loads(store.get_bytes(last))
        if doc.get("fingerprint") != plan["fingerprint"]:
            raise DestinationConflict(
                f"{store.url} already holds a different ingest (corpus {doc.get('corpus')!r}, "
                f"{doc.get('shards')} shards; settings or listing differ): use a new destination "
                f"or delete it first")
        if _owner_alive(doc, lease_s):
            raise DestinationConflict(
                f"{store.url} is being written by another ingest (pid {doc.get('pid')} on "
                f"{doc.get('host')}, heartbeat {time.time() - doc.get('heartbeat_unix', 0):.0f} s "
                f"ago): wait for it to finish")
        generation = int(last[len(CLAIM_PREFIX):-len(".json")]) + 1
    else:
        existing = [k for k in store.list("") if not k.startswith(INGEST_PREFIX)]
        if existing:
            raise DestinationConflict(f"{store.url} is not empty and was not written by an "
                                      f"ingest (found {existing[0]!r}); use an empty destination")
    if before_create is not None:
        before_create()
    doc = {**plan, "owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
           "heartbeat_unix": time.time(), "schema_version": SCHEMA_VERSION}
    claim = Claim(store, generation, doc, lease_s)
    if not store.put_bytes_if_absent(claim._key, json.dumps(doc, sort_keys=True).encode()):
        raise DestinationConflict(f"{store.url}: another ingest claimed this destination at the "
                                  f"same moment; let it finish")
    return claim
