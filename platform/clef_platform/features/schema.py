"""The long observation table every source is turned into, and the log of dropped values.

One row per value: (patient_id, feature, value, observed_at, known_at, source). `observed_at` is
when the value applied (for an age: the moment the age is stated for); `known_at` is when it
could first be used (end of the day for omr's date-only rows, the discharge time for diagnoses,
the result time for labs). Point-in-time joins use known_at. Static facts (sex, the anchor age)
are known from FLOOR on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

FLOOR = pd.Timestamp("1970-01-01", tz="UTC")
# Stands for "no time": far beyond MIMIC's shifted 2110-2210, inside pandas' ns range (2262).
FAR_FUTURE = pd.Timestamp("2260-01-01", tz="UTC")

# Which view each feature lives in (names are unique across views: the on-demand view sees them
# without the view prefix).
FEATURE_VIEW: dict[str, str] = {
    "age": "demographics", "male": "demographics",
    "sbp": "vitals", "dbp": "vitals", "bmi": "vitals", "height_cm": "vitals",
    "weight_kg": "vitals",
    "total_chol": "labs", "hdl": "labs",
    "smoker": "conditions", "diabetes": "conditions",
}
SCORE2_INPUTS: tuple[str, ...] = ("age", "male", "smoker", "sbp", "total_chol", "hdl", "diabetes")
OBS_COLUMNS = ["patient_id", "feature", "value", "observed_at", "known_at", "source"]
REJECT_COLUMNS = ["source", "patient_id", "feature", "raw", "reason"]


def empty_observations() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": pd.Series(dtype=str), "feature": pd.Series(dtype=str),
        "value": pd.Series(dtype=float),
        "observed_at": pd.Series(dtype="datetime64[ns, UTC]"),
        "known_at": pd.Series(dtype="datetime64[ns, UTC]"), "source": pd.Series(dtype=str)})


@dataclass
class Rejects:
    """Dropped values with a reason ("malformed:...", "implausible", "unit:...", ...)."""
    rows: list[dict] = field(default_factory=list)

    def add(self, frame: pd.DataFrame, source: str, feature: str, reason: str,
            raw_col: str = "raw") -> None:
        for pid, raw in zip(frame["patient_id"], frame[raw_col]):
            self.rows.append({"source": source, "patient_id": pid, "feature": feature,
                              "raw": None if pd.isna(raw) else str(raw), "reason": reason})

    def extend(self, other: "Rejects") -> None:
        self.rows.extend(other.rows)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=REJECT_COLUMNS)

    def counts(self) -> dict[tuple[str, str, str], int]:
        return dict(Counter((r["source"], r["feature"], r["reason"]) for r in self.rows))


def check_observations(obs: pd.DataFrame) -> pd.DataFrame:
    """Validates the schema of a long observation table and normalises dtypes."""
    missing = set(OBS_COLUMNS) - set(obs.columns)
    if missing:
        raise ValueError(f"observations lack columns {sorted(missing)}")
    unknown = set(obs["feature"]) - set(FEATURE_VIEW)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}")
    out = obs[OBS_COLUMNS].copy()
    out["patient_id"] = out["patient_id"].astype(str)
    out["value"] = out["value"].astype(float)
    for col in ("observed_at", "known_at"):
        out[col] = pd.to_datetime(out[col], utc=True).astype("datetime64[ns, UTC]")
    if out["known_at"].isna().any():
        raise ValueError("every observation needs known_at")
    return out.reset_index(drop=True)
