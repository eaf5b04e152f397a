"""The results store: one Parquet table in the object store, keyed by
(checkpoint, task, config_hash).

`config_hash` (probes.ProbeConfig.hash) covers the probe settings, the task definition and the
embedding view, so changing any of them evaluates again instead of mixing results. A rerun adds
nothing that is already there (`add` drops rows whose key exists). Rows are added task by task
with a read-modify-write of the whole table, written atomically (local temp file + rename, or one
S3 PUT); one evaluator process per results table is the supported deployment (the CronJob uses
concurrencyPolicy: Forbid).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clef_platform.evaluate.data import split_url

log = logging.getLogger(__name__)

KEY = ("checkpoint", "task", "config_hash")


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
    n_excluded_leakage: int  # records dropped because the checkpoint trained on them
    dataset: str
    classes: str = "[]"      # JSON list of probed classes
    skipped: str = "{}"      # JSON {class: why} of classes below the minimum
    per_class: str = "{}"    # JSON {class: AUROC}
    detail: str = "{}"       # JSON: chosen regularisation, timings, leakage source
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


SCHEMA = pa.schema([
    ("checkpoint", pa.string()), ("kind", pa.string()), ("run", pa.string()),
    ("step", pa.int64()), ("task", pa.string()), ("config_hash", pa.string()),
    ("status", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
    ("lower", pa.float64()), ("upper", pa.float64()), ("n_records", pa.int64()),
    ("n_test", pa.int64()), ("n_excluded_leakage", pa.int64()), ("dataset", pa.string()),
    ("classes", pa.string()), ("skipped", pa.string()), ("per_class", pa.string()),
    ("detail", pa.string()), ("created_at", pa.string()),
])


def dumps(o: Any) -> str:
    return json.dumps(o, sort_keys=True, default=str)


class ResultsStore:
    def __init__(self, url: str):
        self.url = url
        self._store, self._key = split_url(url)

    def read(self) -> pd.DataFrame:
        if not self._store.exists(self._key):
            return SCHEMA.empty_table().to_pandas()
        return pq.read_table(io.BytesIO(self._store.get_bytes(self._key))).to_pandas()

    def keys(self) -> set[tuple[str, str, str]]:
        df = self.read()
        return set(zip(df["checkpoint"], df["task"], df["config_hash"]))

    def add(self, rows: Iterable[ResultRow]) -> int:
        """Append rows whose key is not stored yet; returns how many were added."""
        df = self.read()
        have = set(zip(df["checkpoint"], df["task"], df["config_hash"]))
        new = []
        for r in rows:
            k = (r.checkpoint, r.task, r.config_hash)
            if k in have:
                log.info("result for %s already stored; not adding it again", k)
                continue
            have.add(k)
            new.append(asdict(r))
        if not new:
            return 0
        table = pa.concat_tables([pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False),
                                  pa.Table.from_pylist(new, schema=SCHEMA)])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self._store.put_bytes(self._key, buf.getvalue())
        return len(new)
