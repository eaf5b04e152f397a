"""A run's evaluation results (schema version 1): one JSON object per result.

Under a run `<storage>/<run-name>/`:

    eval/results/<digest>.json    one result: {"schema_version", "key": {...}, "row": {...}}

A result's key (`ResultKey`) names what was scored: the model (an export's `ExportMarker.digest`,
or a baseline's id), the task, the probe config hash, the probed dataset's `Dataset.digest`, the
protocol and the digest of the records excluded for leakage. `digest` (SHA-256 of the key) is the
object's name. An object is created only if absent (`put_bytes_if_absent`: a hard link locally,
If-None-Match on S3), so evaluators racing on the same result store it exactly once and never
overwrite each other; new weights or new data give a new key and are scored again.

Reading lists the objects and returns one table (pandas, `COLUMNS`); an object that is not a
result of this schema, or whose name is not its key's digest, is an error naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from clef_platform.digests import stable_hash
from clef_platform.storage import ObjectStore, open_store

SCHEMA_VERSION = 1
RESULTS_PREFIX = "eval/results"
SUFFIX = ".json"
PROTOCOL = "linear-probe"             # the default protocol
PROTOCOLS = ("linear-probe", "fine-tune")


class ResultsError(ValueError):
    """A stored result that cannot be read as one (names the object)."""


def results_url(run: str) -> str:
    return f"{str(run).rstrip('/')}/{RESULTS_PREFIX}"


@dataclass(frozen=True)
class ResultKey:
    model: str                  # ExportMarker.digest, or a baseline id (random:small:seed0)
    task: str
    config_hash: str            # probe settings + task definition + embedding view
    dataset_digest: str         # layout.dataset.Dataset.digest of the probed dataset
    exclusion_digest: str       # the records excluded for leakage
    protocol: str = PROTOCOL

    @property
    def digest(self) -> str:
        return stable_hash(f"clef-result/{SCHEMA_VERSION}", asdict(self), length=64)


@dataclass
class ResultRow:
    checkpoint: str          # export URL, or random:<scale>:seed<N>, released:<scale>:<path>
    kind: str                # export | random | released
    run: str                 # the run URL the evaluation was for
    step: int                # training step (-1 for baselines)
    task: str
    config_hash: str
    status: str              # ok | skipped (labels below the minimum)
    metric: str              # auroc | mae
    value: float
    lower: float
    upper: float
    n_records: int           # labelled records probed
    n_test: int
    n_excluded_leakage: int  # records dropped because the run trained on them
    dataset: str             # dataset URL
    dataset_digest: str = ""
    export_digest: str = ""  # the export's ExportMarker.digest ("" for baselines)
    exclusion_digest: str = ""
    protocol: str = PROTOCOL  # linear-probe | fine-tune (part of the key)
    lead: str = ""           # the lead scored (part of the key through config_hash; "" in
    #                          results stored before it was recorded)
    lineage: str = "checked"  # checked | none (scored without lineage: leakage not checked)
    classes: str = "[]"      # JSON list of probed classes
    skipped: str = "{}"      # JSON {class: why} of classes below the minimum
    per_class: str = "{}"    # JSON {class: AUROC}
    detail: str = "{}"       # JSON: chosen regularisation, timings, leakage sources
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def key(self) -> ResultKey:
        return ResultKey(model=self.export_digest or self.checkpoint, task=self.task,
                         config_hash=self.config_hash, dataset_digest=self.dataset_digest,
                         exclusion_digest=self.exclusion_digest, protocol=self.protocol)


COLUMNS = [f.name for f in fields(ResultRow)] + ["key"]
_FLOATS = {f.name for f in fields(ResultRow) if f.type == "float"}


def _encode(row: ResultRow) -> bytes:
    d = asdict(row)
    for k in _FLOATS:      # JSON has no NaN: a skipped result stores null
        if d[k] is not None and math.isnan(d[k]):
            d[k] = None
    return json.dumps({"schema_version": SCHEMA_VERSION, "key": asdict(row.key()), "row": d},
                      sort_keys=True, indent=1, allow_nan=False).encode()


def _decode(data: bytes, where: str, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise ResultsError(f"{where}: results schema version {doc.get('schema_version')}, "
                               f"this platform reads {SCHEMA_VERSION}")
        row = ResultRow(**doc["row"])
        key = ResultKey(**doc["key"])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        if isinstance(e, ResultsError):
            raise
        raise ResultsError(f"{where}: not a stored result ({type(e).__name__}: {e})") from None
    if key != row.key() or key.digest != name:
        raise ResultsError(f"{where}: its name is not the digest of its key (copied or edited "
                           f"by hand); remove it")
    d = asdict(row)
    for k in _FLOATS:
        if d[k] is None:
            d[k] = float("nan")
    d["key"] = name
    return d


class ResultsStore:
    """The results of one run: `<run>/eval/results/` (or any folder / prefix URL)."""

    def __init__(self, url: str | ObjectStore) -> None:
        self._store = url if isinstance(url, ObjectStore) else open_store(url)
        self.url = self._store.url

    def _names(self) -> list[str]:
        return [k[:-len(SUFFIX)] for k in self._store.list("") if k.endswith(SUFFIX)
                and "/" not in k]

    def keys(self) -> set[str]:
        """Digests of the stored results (one listing, no reads)."""
        return set(self._names())

    def add(self, row: ResultRow) -> bool:
        """Store `row` unless a result with its key exists; True if this call stored it."""
        return self._store.put_bytes_if_absent(f"{row.key().digest}{SUFFIX}", _encode(row))

    def read(self) -> pd.DataFrame:
        """Every stored result as one table (columns `COLUMNS`), by creation time then key."""
        rows = []
        for name in self._names():
            obj = f"{name}{SUFFIX}"
            rows.append(_decode(self._store.get_bytes(obj), self._store.full_url(obj), name))
        df = pd.DataFrame(rows, columns=COLUMNS)
        df = df.astype({"step": "int64", "n_records": "int64", "n_test": "int64",
                        "n_excluded_leakage": "int64", **{k: "float64" for k in _FLOATS}})
        return df.sort_values(["created_at", "key"]).reset_index(drop=True)
