"""RiskClient: SCORE2 risk and missing fraction for (patient_id, ECG time) keys.

The trainer and the evaluators call it once per job with every key they will need (historical
retrieval is ~10^5 rows/s, an online lookup per step would dominate a training step); later calls
are answered from the in-memory cache. Point-in-time correctness comes from Feast's historical
retrieval at each ECG time plus the per-value lookback in score2_at_ecg. A patient the store does
not know gets missing fraction 1 (fully imputed risk), not an error. A key without a time ("")
uses the patient's corpus-level header demographics only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clef_platform.features.config import VIEWS
from clef_platform.features.repo import RISK_VIEW, BuildInfo
from clef_platform.features.schema import FAR_FUTURE, FLOOR
from clef_platform.features.tables import to_unix, view_columns
from clef_platform.features.transform import OUTPUTS, score2_at_ecg

log = logging.getLogger(__name__)
NO_TIME = np.iinfo(np.int64).min          # cache key of "no ECG time" (NaT's int64 value)


def normalise_time(value) -> pd.Timestamp | None:
    """ISO string / Timestamp / datetime -> UTC Timestamp; "", None, NaT -> None (no time).
    Naive times are taken as UTC (MIMIC's times are naive)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    ts = pd.Timestamp(value)
    if ts is pd.NaT or pd.isna(ts):
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass
class ClientStats:
    requested: int = 0
    cache_hits: int = 0
    retrieved: int = 0
    feast_calls: int = 0
    feast_dropped: int = 0     # rows Feast left out (should stay 0; see tables.py)


class RiskClient:
    """`RiskClient(repo_dir)`; `lookup(keys)`, `risk_arrays(patient_ids, ecg_times)`, `online(...)`."""

    def __init__(self, repo_dir: str | Path, store=None):
        from feast import FeatureStore

        from clef_platform.mirror import mirror

        # a repository published to object storage (jobs/build_features.py --repo s3://...)
        # is read from this host's copy of it
        self.repo = mirror(repo_dir).resolve()
        self.store = store or FeatureStore(repo_path=str(self.repo))
        self.info = BuildInfo.load(self.repo)
        self.ttl_seconds: dict[str, float] = self.info.config["ttl_seconds"]
        self.region: str = self.info.config["region"]
        self._cache: dict[tuple[str, int], tuple[float, ...]] = {}
        self.stats = ClientStats()

    @staticmethod
    def feature_refs() -> list[str]:
        refs = [f"{v}:{c}" for v in VIEWS for c in view_columns(v)]
        return refs + [f"{RISK_VIEW}:{o}" for o in OUTPUTS]

    @staticmethod
    def _times_ns(times: Sequence[object]) -> np.ndarray:
        """Vectorised normalise_time: int64 ns since the epoch (UTC), NO_TIME for no time."""
        ser = pd.Series(list(times), dtype=object)
        none = ser.isna().to_numpy() | ser.map(
            lambda v: isinstance(v, str) and not v.strip()).to_numpy(dtype=bool)
        out = np.full(len(ser), NO_TIME, dtype=np.int64)
        if (~none).any():
            vals = ser[~none]
            try:
                conv = pd.to_datetime(vals, utc=True, format="ISO8601")
            except (ValueError, TypeError):
                conv = pd.Series([normalise_time(v) for v in vals], index=vals.index)
                conv = pd.to_datetime(conv, utc=True)
            out[~none] = conv.astype("datetime64[ns, UTC]").astype(np.int64).to_numpy()
        return out

    def _retrieve(self, keys: list[tuple[str, int]]) -> None:
        """One historical retrieval for keys not cached yet; fills the cache."""
        ns = np.array([t for _, t in keys], dtype=np.int64)
        timeless = ns == NO_TIME
        floor_ns = FLOOR.value
        early = int((~timeless & (ns < floor_ns)).sum())
        if early:
            log.warning("%d ECG times before %s are clamped to it", early, FLOOR.date())
        event_ns = np.where(timeless, FAR_FUTURE.value, np.maximum(ns, floor_ns))
        entity_df = pd.DataFrame({
            "patient_id": [p for p, _ in keys],
            "event_timestamp": pd.to_datetime(event_ns, utc=True),
            # No time: NaN tells score2_at_ecg to use demographics only.
            "ecg_ts": np.where(timeless, np.nan, ns / 1e9),
        })
        job = self.store.get_historical_features(entity_df=entity_df,
                                                 features=self.feature_refs())
        got = job.to_df()
        self.stats.feast_calls += 1
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
        merged = entity_df.merge(got[["patient_id", "event_timestamp", *OUTPUTS]],
                                 on=["patient_id", "event_timestamp"], how="left",
                                 indicator=True)
        dropped = (merged["_merge"] == "left_only").to_numpy()
        if dropped.any():
            # Safety net: recompute those rows from no observations at all (as unknown).
            self.stats.feast_dropped += int(dropped.sum())
            log.warning("Feast returned no row for %d keys; treating them as unknown",
                        int(dropped.sum()))
            fallback = score2_at_ecg(merged.loc[dropped, ["ecg_ts"]], self.ttl_seconds,
                                     self.region)
            merged.loc[dropped, list(OUTPUTS)] = fallback[list(OUTPUTS)].to_numpy()
        values = merged[list(OUTPUTS)].to_numpy(dtype=float)
        self._cache.update(zip(keys, map(tuple, values)))
        self.stats.retrieved += len(keys)

    def lookup(self, keys: Iterable[tuple[str, object]]) -> pd.DataFrame:
        """Risk, missing fraction and the SCORE2 inputs used, one row per key, in key order.
        `ecg_time` comes back as a UTC Timestamp (NaT for a key without a time)."""
        keys = list(keys)
        pids = [str(p) for p, _ in keys]
        ns = self._times_ns([t for _, t in keys])
        norm = list(zip(pids, ns.tolist()))
        self.stats.requested += len(norm)
        cache = self._cache
        todo = list(dict.fromkeys(k for k in norm if k not in cache))
        todo_set = set(todo)
        self.stats.cache_hits += sum(1 for k in norm if k not in todo_set)
        if todo:
            self._retrieve(todo)
        values = np.array([cache[k] for k in norm], dtype=float).reshape(len(norm),
                                                                         len(OUTPUTS))
        out = pd.DataFrame(values, columns=list(OUTPUTS))
        out.insert(0, "patient_id", pids)
        out.insert(1, "ecg_time", pd.to_datetime(np.where(ns == NO_TIME, np.iinfo(np.int64).min,
                                                          ns), utc=True))
        return out

    def prefetch(self, keys: Iterable[tuple[str, object]]) -> None:
        """Warm the cache with every key of a job (one Feast call)."""
        self.lookup(keys)

    def risk_arrays(self, patient_ids: Sequence[str], ecg_times: Sequence[object]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(risk, missing_fraction) as float32 arrays aligned with the inputs."""
        if len(patient_ids) != len(ecg_times):
            raise ValueError("patient_ids and ecg_times differ in length")
        df = self.lookup(zip(patient_ids, ecg_times))
        return (df["risk"].to_numpy(np.float32), df["missing_fraction"].to_numpy(np.float32))

    def __len__(self) -> int:
        return len(self._cache)

    def online(self, patient_ids: Sequence[str], at=None) -> pd.DataFrame:
        """Serving: risk from the online store's latest values (materialised rows).

        `at` (ISO string / Timestamp) is the time the risk is evaluated at; by default each
        patient's own latest known value time (MIMIC's shifted dates lie in the future, and a
        global "now" would age every value past its lookback window)."""
        rows = [{"patient_id": str(p)} for p in patient_ids]
        at_ts = normalise_time(at)
        if at_ts is None:
            raw = self.store.get_online_features(
                features=[f"{v}:{c}" for v in VIEWS for c in view_columns(v)
                          if c.endswith("_ts")], entity_rows=rows).to_df()
            ts_cols = [c for c in raw.columns if c.endswith("_ts") and c != "age_ref_ts"]
            latest = raw[ts_cols].apply(pd.to_numeric, errors="coerce").max(axis=1)
            ecg = latest.to_numpy(dtype=float)
        else:
            ecg = np.full(len(rows), float(to_unix(pd.Series([at_ts]))[0]))
        for row, t in zip(rows, ecg):
            # FLOOR-only patients (static facts) have no time: evaluate like a time-less record.
            row["ecg_ts"] = None if np.isnan(t) or t <= 0 else float(t)
        df = self.store.get_online_features(features=self.feature_refs(),
                                            entity_rows=rows).to_df()
        for col in OUTPUTS:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        return df
