"""Long observations -> one wide, point-in-time table per feature view (the Parquet sources).

Each row (patient_id, event_timestamp = known_at) holds, for every feature of the view, the
latest value known at that instant and, in `<feature>_ts`, when that value became known (unix
seconds): a value keeps its own timestamp even when carried forward. Carrying forward is needed
because Feast picks the latest ROW at or before the ECG time, and a row created by a weight
measurement must not hide the blood pressure measured a week earlier. The per-value timestamps
let the risk transform apply each view's TTL to each value exactly.

Every patient also gets a row at FLOOR (all-null unless a static fact lives there). Feast 0.67's
file offline store drops an entity row from the result when the patient has rows in a view but
none at or before the requested time (dask `_filter_ttl`); the FLOOR row keeps such requests in
the result with null features. For the same reason the views' Feast TTL is 0 and the
configured lookback windows are enforced per value in transform.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clef_platform.features.config import VIEWS
from clef_platform.features.schema import FEATURE_VIEW, FLOOR

_REF_SENTINEL = -1.0e18     # "age known but stated for no time" during forward-fill


def view_features(view: str) -> list[str]:
    return [f for f, v in FEATURE_VIEW.items() if v == view]


def view_columns(view: str) -> list[str]:
    """Feature columns of a view's table, in schema order."""
    cols = []
    for f in view_features(view):
        cols += [f, f"{f}_ts"]
    if view == "demographics":
        cols.append("age_ref_ts")
    return cols


def to_unix(ts: pd.Series) -> pd.Series:
    out = (ts - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(seconds=1)
    return out.astype(float)


def build_view_table(obs: pd.DataFrame, view: str) -> pd.DataFrame:
    feats = view_features(view)
    part = obs[obs["feature"].isin(feats)]
    cols = view_columns(view)
    if part.empty:
        empty = {c: pd.Series(dtype=float) for c in cols}
        return pd.DataFrame({"patient_id": pd.Series(dtype=str),
                             "event_timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                             **empty})
    floor = pd.DataFrame({"patient_id": sorted(part["patient_id"].unique()), "known_at": FLOOR})
    wide = part.pivot_table(index=["patient_id", "known_at"], columns="feature", values="value",
                            aggfunc="mean")
    wide = wide.reset_index().merge(floor, on=["patient_id", "known_at"], how="outer")
    for f in feats:
        if f not in wide:
            wide[f] = np.nan
    known_unix = to_unix(wide["known_at"])
    for f in feats:
        wide[f"{f}_ts"] = known_unix.where(wide[f].notna())
    if view == "demographics":
        ages = part[part["feature"] == "age"]
        ref = ages.groupby(["patient_id", "known_at"])["observed_at"].max().reset_index()
        ref["age_ref_ts"] = to_unix(ref["observed_at"])
        wide = wide.merge(ref[["patient_id", "known_at", "age_ref_ts"]],
                          on=["patient_id", "known_at"], how="left")
        wide.loc[wide["age"].notna() & wide["age_ref_ts"].isna(), "age_ref_ts"] = _REF_SENTINEL
    wide = wide.sort_values(["patient_id", "known_at"], kind="stable").reset_index(drop=True)
    wide[cols] = wide.groupby("patient_id", sort=False)[cols].ffill()
    if view == "demographics":
        wide.loc[wide["age_ref_ts"] == _REF_SENTINEL, "age_ref_ts"] = np.nan
    out = wide.rename(columns={"known_at": "event_timestamp"})[["patient_id", "event_timestamp",
                                                                *cols]]
    out[cols] = out[cols].astype(float)
    out["event_timestamp"] = out["event_timestamp"].astype("datetime64[ns, UTC]")
    return out.reset_index(drop=True)


def build_view_tables(obs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    # No created-timestamp column: Feast would drop versions "created" (built) after the
    # requested time, and every MIMIC time lies after the build.
    return {view: build_view_table(obs, view) for view in VIEWS}
