"""SCORE2 (age 40-69) and SCORE2-OP (age 70+) ten-year cardiovascular risk, vectorised NumPy.

Coefficients, centring and regional recalibration are the published ones
(Eur Heart J 2021;42:2439-2454 and 2455-2467; summarised in ../shared/reference/score2.md).
Cholesterol in mmol/L (mg/dL / 38.67), systolic pressure in mmHg; the result is a fraction.

Two entry points:

- `score2(...)`: every input known. Ages outside 40-89 are clamped into that range (the models
  were derived for 40-69 and 70-89; clamping gives the nearest age the model covers rather
  than extrapolating the age interactions).
- `score2_with_missing(...)`: any input may be NaN. The imputation rule (IMPUTATION below):
  continuous inputs take the SCORE2 centring values, i.e. the reference person of the model
  (age 60, SBP 120 mmHg, total cholesterol 6 mmol/L, HDL 1.3 mmol/L); smoking and diabetes are
  imputed as absent (the centring value 0); a missing sex is handled by averaging the risk of
  the man and the woman with otherwise identical inputs. The missing fraction is the number of
  missing inputs / 7. A clamped age is not counted as missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["REGIONS", "IMPUTATION", "normalise_region", "score2", "score2_with_missing"]

REGIONS: tuple[str, ...] = ("low", "moderate", "high", "very high")
AGE_MIN, AGE_MAX, AGE_OP = 40.0, 89.0, 70.0
N_INPUTS = 7

# Imputed values for missing inputs (SCORE2's centring values). Sex: averaged over both sexes.
IMPUTATION: dict[str, float] = {
    "age": 60.0, "smoker": 0.0, "sbp": 120.0, "total_chol": 6.0, "hdl": 1.3, "diabetes": 0.0,
}


@dataclass(frozen=True)
class _Model:
    """Coefficients of one sex in one model (SCORE2 or SCORE2-OP)."""
    age: float
    smoking: float
    sbp: float
    diabetes: float
    tchol: float
    hdl: float
    smoking_age: float
    sbp_age: float
    tchol_age: float
    hdl_age: float
    diabetes_age: float
    s0: float
    mean_lp: float                  # 0 for SCORE2 (its inputs are centred instead)
    calibration: dict[str, tuple[float, float]]


_SCORE2 = {
    True: _Model(0.3742, 0.6012, 0.2777, 0.6457, 0.1458, -0.2698, -0.0755, -0.0255, -0.0281,
                 0.0426, -0.0983, 0.9605, 0.0,
                 {"low": (-0.5699, 0.7476), "moderate": (-0.1565, 0.8009),
                  "high": (0.3207, 0.9360), "very high": (0.5836, 0.8294)}),
    False: _Model(0.4648, 0.7744, 0.3131, 0.8096, 0.1002, -0.2606, -0.1088, -0.0277, -0.0226,
                  0.0613, -0.1272, 0.9776, 0.0,
                  {"low": (-0.7380, 0.7019), "moderate": (-0.3143, 0.7701),
                   "high": (0.5710, 0.9369), "very high": (0.9412, 0.8329)}),
}
_SCORE2_OP = {
    True: _Model(0.0634, 0.3524, 0.0094, 0.4245, 0.0850, -0.3564, -0.0247, -0.0005, 0.0073,
                 0.0091, -0.0174, 0.7576, 0.0929,
                 {"low": (-0.34, 1.19), "moderate": (0.01, 1.25),
                  "high": (0.08, 1.15), "very high": (0.05, 0.70)}),
    False: _Model(0.0789, 0.4921, 0.0102, 0.6010, 0.0605, -0.3040, -0.0255, -0.0004, -0.0009,
                  0.0154, -0.0107, 0.8082, 0.229,
                  {"low": (-0.52, 1.01), "moderate": (-0.10, 1.10),
                   "high": (0.38, 1.09), "very high": (0.38, 0.69)}),
}


def normalise_region(region: str) -> str:
    """'very_high', 'Very-High' and 'very high' are the same region; anything else raises."""
    if not isinstance(region, str):
        raise ValueError(f"region must be a string, one of {REGIONS}; got {region!r}")
    key = region.strip().lower().replace("_", " ").replace("-", " ")
    if key not in REGIONS:
        raise ValueError(f"unknown SCORE2 region {region!r}; expected one of {REGIONS}")
    return key


def _risk_one_sex(m: _Model, region: str, cage, smoker, csbp, ctchol, chdl, diabetes):
    lp = (m.age * cage + m.smoking * smoker + m.sbp * csbp + m.diabetes * diabetes
          + m.tchol * ctchol + m.hdl * chdl
          + m.smoking_age * smoker * cage + m.sbp_age * csbp * cage
          + m.tchol_age * ctchol * cage + m.hdl_age * chdl * cage
          + m.diabetes_age * diabetes * cage)
    uncalibrated = 1.0 - np.power(m.s0, np.exp(lp - m.mean_lp))
    s1, s2 = m.calibration[region]
    return 1.0 - np.exp(-np.exp(s1 + s2 * np.log(-np.log1p(-uncalibrated))))


def _score2_float(age, male, smoker, sbp, tchol, hdl, diabetes, region) -> np.ndarray:
    """All inputs already broadcast float arrays with no NaN in age/sex."""
    age = np.clip(age, AGE_MIN, AGE_MAX)
    old = age >= AGE_OP
    out = np.empty(age.shape, dtype=np.float64)
    for is_male in (True, False):
        sel_sex = (male > 0.5) if is_male else ~(male > 0.5)
        young = sel_sex & ~old
        if young.any():
            a = age[young]
            out[young] = _risk_one_sex(
                _SCORE2[is_male], region, (a - 60.0) / 5.0, smoker[young],
                (sbp[young] - 120.0) / 20.0, tchol[young] - 6.0,
                (hdl[young] - 1.3) / 0.5, diabetes[young])
        senior = sel_sex & old
        if senior.any():
            a = age[senior]
            out[senior] = _risk_one_sex(
                _SCORE2_OP[is_male], region, a - 73.0, smoker[senior],
                sbp[senior] - 150.0, tchol[senior] - 6.0, hdl[senior] - 1.4,
                diabetes[senior])
    return out


def _as_float(x) -> np.ndarray:
    # None means missing; bools/ints become 0/1 floats so NaN can stand for "unknown".
    arr = np.asarray(x, dtype=object) if x is None else np.asarray(x)
    if arr.dtype == object:
        arr = np.array([np.nan if v is None else v for v in arr.ravel()],
                       dtype=np.float64).reshape(arr.shape)
    return arr.astype(np.float64)


def score2(age, male, smoker, sbp, total_chol, hdl, diabetes=False,
           region: str = "moderate"):
    """Ten-year CVD risk (fraction): SCORE2 below 70 years, SCORE2-OP from 70.

    Inputs are array-likes that broadcast together (scalars are fine); `male`, `smoker` and
    `diabetes` are booleans or 0/1. Cholesterol in mmol/L, SBP in mmHg. Ages are clamped into
    40-89. Returns a float for all-scalar input, else an ndarray of the broadcast shape.
    A NaN in any input gives NaN (use `score2_with_missing` to impute).
    """
    region = normalise_region(region)
    arrays = np.broadcast_arrays(*(_as_float(v) for v in
                                   (age, male, smoker, sbp, total_chol, hdl, diabetes)))
    age_a, male_a, smoker_a, sbp_a, tc_a, hdl_a, dm_a = (np.array(a, dtype=np.float64)
                                                         for a in arrays)
    bad = np.isnan(age_a) | np.isnan(male_a)
    out = _score2_float(np.where(bad, IMPUTATION["age"], age_a), np.nan_to_num(male_a),
                        smoker_a, sbp_a, tc_a, hdl_a, dm_a, region)
    out[bad] = np.nan
    return float(out) if out.ndim == 0 else out


def score2_with_missing(age, male, smoker, sbp, total_chol, hdl, diabetes,
                        region: str = "moderate"):
    """SCORE2/SCORE2-OP where any of the seven inputs may be NaN (or None).

    Missing inputs are imputed by the rule in IMPUTATION (the model's centring values; a missing
    sex averages the male and female risk). Returns `(risk, missing_fraction)`, with
    missing_fraction = number of missing inputs / 7. Ages outside 40-89 are clamped and not
    counted as missing. Scalars in, floats out; otherwise arrays of the broadcast shape.
    """
    region = normalise_region(region)
    arrays = np.broadcast_arrays(*(_as_float(v) for v in
                                   (age, male, smoker, sbp, total_chol, hdl, diabetes)))
    age_a, male_a, smoker_a, sbp_a, tc_a, hdl_a, dm_a = (np.array(a, dtype=np.float64)
                                                         for a in arrays)
    n_missing = sum(np.isnan(a).astype(np.int64) for a in
                    (age_a, male_a, smoker_a, sbp_a, tc_a, hdl_a, dm_a))

    def fill(a, name):
        return np.where(np.isnan(a), IMPUTATION[name], a)

    filled = (fill(age_a, "age"), fill(smoker_a, "smoker"), fill(sbp_a, "sbp"),
              fill(tc_a, "total_chol"), fill(hdl_a, "hdl"), fill(dm_a, "diabetes"))
    a, s, b, t, h, d = filled
    risk_m = _score2_float(a, np.ones_like(a), s, b, t, h, d, region)
    risk_f = _score2_float(a, np.zeros_like(a), s, b, t, h, d, region)
    sex_missing = np.isnan(male_a)
    risk = np.where(sex_missing, 0.5 * (risk_m + risk_f),
                    np.where(np.nan_to_num(male_a) > 0.5, risk_m, risk_f))
    frac = n_missing / N_INPUTS
    if risk.ndim == 0:
        return float(risk), float(frac)
    return risk, frac.astype(np.float64)
