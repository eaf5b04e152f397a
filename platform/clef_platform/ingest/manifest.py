"""Manifest and quarantine tables (Parquet) and the per-shard parts they are assembled from.

Layout at a dataset root:

    shards/<split>-<NNNNNN>.tar       the WebDataset shards
    _ingest/plan.json                 what this destination is being filled with (resume check)
    _ingest/parts/<shard>.json        one per finished shard: its manifest and quarantine rows;
                                      written after the shard, so it marks the shard complete
    quarantine.parquet                one row per rejected record
    manifest.parquet                  one row per stored record; written LAST (commit marker)
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clef_platform.ingest.shards import dumps_json
from clef_platform.storage import ObjectStore

MANIFEST_KEY = "manifest.parquet"
QUARANTINE_KEY = "quarantine.parquet"
PLAN_KEY = "_ingest/plan.json"
PARTS_PREFIX = "_ingest/parts/"

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


def manifest_row(meta: dict[str, Any], shard: str) -> dict[str, Any]:
    return {
        "key": meta["key"], "corpus": meta["corpus"], "record_id": meta["record_id"],
        "patient_id": meta["patient_id"], "ecg_time": meta["ecg_time"], "age": meta["age"],
        "sex": meta["sex"], "split": meta["split"], "shard": shard, "sha256": meta["sha256"],
        "fs_original": meta["fs_original"], "n_samples": meta["n_samples"],
        "lead_mask": meta["lead_mask"], "n_leads_usable": int(sum(meta["lead_mask"])),
        "quality_flags": dumps_json(meta["quality_flags"]),
        "native_ids": dumps_json(meta["native_ids"]), "labels": dumps_json(meta["labels"]),
    }


def _to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def _part_key(shard: str) -> str:
    return f"{PARTS_PREFIX}{shard}.json"


def write_part(store: ObjectStore, shard: str, stored: list[dict[str, Any]],
               quarantined: list[dict[str, Any]], shard_bytes: int) -> None:
    """The rows of one finished shard (small JSON; written after the shard itself)."""
    body = dumps_json({"shard": shard, "stored": stored, "quarantined": quarantined,
                       "shard_bytes": shard_bytes})
    store.put_bytes(_part_key(shard), body.encode("ascii"))


def read_part(store: ObjectStore, shard: str,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(manifest rows, quarantine rows, shard bytes) of a finished shard."""
    part = json.loads(store.get_bytes(_part_key(shard)))
    return part["stored"], part["quarantined"], int(part["shard_bytes"])


def part_exists(store: ObjectStore, shard: str) -> bool:
    return store.exists(_part_key(shard))


def manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def quarantine_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def write_tables(store: ObjectStore, manifest: pa.Table, quarantine: pa.Table) -> None:
    """Quarantine first, manifest last: a manifest means the dataset is complete."""
    store.put_bytes(QUARANTINE_KEY, _to_bytes(quarantine.cast(QUARANTINE_SCHEMA)))
    store.put_bytes(MANIFEST_KEY, _to_bytes(manifest.cast(MANIFEST_SCHEMA)))


def read_manifest(store: ObjectStore) -> pa.Table:
    if not store.exists(MANIFEST_KEY):
        raise FileNotFoundError(
            f"{store.full_url(MANIFEST_KEY)} not found: the dataset was never committed "
            f"(ingest not run or not finished; rerun the same ingest command to resume)")
    return _from_bytes(store.get_bytes(MANIFEST_KEY))


def read_quarantine(store: ObjectStore) -> pa.Table:
    return _from_bytes(store.get_bytes(QUARANTINE_KEY))
