"""SCORE2 at the ECG time from point-in-time joined view rows (the on-demand view's body).

Input columns: the views' features with their `<feature>_ts` (unix s, when each value became
known), demographics' `age_ref_ts` (the instant the stored age applies to) and the request's
`ecg_ts` (unix s of the ECG; NaN for a record without a time). A value is used only when it was
known at or before the ECG and, where its view's TTL is not 0, no older than the TTL. A record
without a time uses demographics only (its corpus-level header age and sex). Everything else is
missing and imputed by clef_model.risk.score2_with_missing, which also gives the missing fraction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clef_model.risk import score2_with_missing
from clef_platform.features.schema import FEATURE_VIEW, SCORE2_INPUTS

SECONDS_PER_YEAR = 365.25 * 86400.0
OUTPUTS: tuple[str, ...] = ("risk", "missing_fraction") + tuple(f"{f}_at_ecg"
                                                                 for f in SCORE2_INPUTS)


def _num(inputs: pd.DataFrame, col: str) -> np.ndarray:
    # Online retrieval hands over object columns holding None; offline gives float NaN.
    if col not in inputs:
        return np.full(len(inputs), np.nan)
    return pd.to_numeric(inputs[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def usable_values(inputs: pd.DataFrame, ttl_seconds: dict[str, float]) -> dict[str, np.ndarray]:
    """SCORE2 inputs as they stood at the ECG time (NaN where not usable)."""
    ecg = _num(inputs, "ecg_ts")
    timeless = np.isnan(ecg)
    out = {}
    for f in SCORE2_INPUTS:
        view = FEATURE_VIEW[f]
        val, ts = _num(inputs, f), _num(inputs, f"{f}_ts")
        ttl = float(ttl_seconds.get(view, 0.0))
        with np.errstate(invalid="ignore"):
            timely = (ts <= ecg) & ((ttl <= 0) | (ecg - ts <= ttl))
        ok = ~np.isnan(val) & ~np.isnan(ts) & (timely | (timeless & (view == "demographics")))
        out[f] = np.where(ok, val, np.nan)
    # The stored age applies at age_ref_ts: move it to the ECG time where both are known.
    ref = _num(inputs, "age_ref_ts")
    shift = np.where(np.isnan(ref) | timeless, 0.0, (ecg - ref) / SECONDS_PER_YEAR)
    out["age"] = out["age"] + shift
    male = out["male"]
    out["male"] = np.where(male > 0.5, 1.0, np.where(male < 0.5, 0.0, np.nan))  # 0.5: conflict
    for f in ("smoker", "diabetes"):
        out[f] = np.where(np.isnan(out[f]), np.nan, (out[f] > 0.5).astype(float))
    return out


def score2_at_ecg(inputs: pd.DataFrame, ttl_seconds: dict[str, float],
                  region: str = "moderate") -> pd.DataFrame:
    vals = usable_values(inputs, ttl_seconds)
    if len(inputs):
        risk, missing = score2_with_missing(vals["age"], vals["male"], vals["smoker"],
                                            vals["sbp"], vals["total_chol"], vals["hdl"],
                                            vals["diabetes"], region=region)
    else:
        risk = missing = np.zeros(0)
    out = pd.DataFrame({"risk": np.asarray(risk, dtype=float),
                        "missing_fraction": np.asarray(missing, dtype=float)},
                       index=inputs.index)
    for f in SCORE2_INPUTS:
        out[f"{f}_at_ecg"] = vals[f]
    return out
