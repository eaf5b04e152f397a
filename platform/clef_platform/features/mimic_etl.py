"""MIMIC-IV hosp tables -> long observations (schema.py), every value with its timestamps.

Rules (docs/features.md has the reasoning):
- patients: sex from gender; age = anchor_age stated for the middle of anchor_year (MIMIC gives
  no birth date, so ages are +-0.5 y); both static, known from FLOOR.
- omr (date only): a value is known at the END of its chartdate, so nothing measured later the
  same day leaks into an earlier ECG; several readings of a feature on one day are averaged.
  Height inches -> cm, weight lbs -> kg.
- labevents: total cholesterol (itemid 50907) and HDL (50904), mg/dL / 38.67 -> mmol/L; known at
  storetime (when the result exists), charttime where storetime is absent.
- diagnoses_icd: codes are assigned at discharge, so each coded admission gives, at its
  dischtime, current smoking (ICD-9 3051; ICD-10 F17*, Z720; history codes V1582/Z87891 mean a
  former smoker, i.e. 0) and diabetes (ICD-9 250*; ICD-10 E08-E11, E13; chronic, so once coded
  it stays 1 at later discharges). A coded admission without a code states 0.
Malformed and implausible values are dropped and logged in Rejects, never raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clef_platform.features.config import PlausibilityRanges
from clef_platform.features.manifest import drop_conflicts
from clef_platform.features.plausibility import filter_plausible
from clef_platform.source_tables import TableError, read_csv, read_csv_chunks
from clef_platform.features.schema import (FLOOR, OBS_COLUMNS, Rejects, check_observations,
                                           empty_observations)

log = logging.getLogger(__name__)

MIMIC_CORPUS = "mimic-iv-ecg"       # MIMIC subjects are keyed like the MIMIC-IV-ECG manifest
MG_DL_PER_MMOL_L = 38.67
LAB_ITEMS = {50907: "total_chol", 50904: "hdl"}
OMR_SIMPLE = {"BMI (kg/m2)": ("bmi", 1.0), "Height (Inches)": ("height_cm", 2.54),
              "Weight (Lbs)": ("weight_kg", 0.45359237)}
BP_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$"
SMOKING_ICD9 = ("3051",)
SMOKING_ICD10_PREFIX = ("F17",)
SMOKING_ICD10_EXACT = ("Z720",)
FORMER_SMOKER = ("V1582", "Z87891")     # documented: never counted as current smoking
DIABETES_ICD9_PREFIX = ("250",)
DIABETES_ICD10_PREFIX = ("E08", "E09", "E10", "E11", "E13")
LAB_CHUNK_ROWS = 2_000_000               # labevents is ~118M rows in the full database


@dataclass
class EtlResult:
    observations: pd.DataFrame
    rejects: Rejects
    patients: list[str]                 # every patient_id the source knows (even without values)


def patient_id(subject_id) -> str:
    return f"{MIMIC_CORPUS}/{int(subject_id)}"


def _table(hosp: Path, name: str) -> Path:
    for candidate in (hosp / f"{name}.csv.gz", hosp / f"{name}.csv"):
        if candidate.exists():
            return candidate
    raise TableError(f"{name}.csv[.gz] not found in {hosp}")


def _obs(pids, feature, values, observed, known, source) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": list(pids), "feature": feature,
                         "value": np.asarray(values, dtype=float),
                         "observed_at": observed, "known_at": known, "source": source})


def _subject_ids(df: pd.DataFrame, source: str, rejects: Rejects) -> pd.DataFrame:
    sid = pd.to_numeric(df["subject_id"], errors="coerce")
    bad = sid.isna()
    if bad.any():
        rejects.add(df[bad].assign(patient_id=None, raw=df.loc[bad, "subject_id"]), source,
                    "*", "malformed:subject_id")
    df = df[~bad].copy()
    df["patient_id"] = [patient_id(s) for s in sid[~bad]]
    return df


def load_patients(hosp: Path, rejects: Rejects) -> tuple[pd.DataFrame, list[str]]:
    src = "mimic:patients"
    df = _subject_ids(read_csv(_table(hosp, "patients"),
                                     ["subject_id", "gender", "anchor_age", "anchor_year"],
                                     dtype=str), src, rejects)
    sex = df["gender"].str.strip().str.upper().map({"M": 1.0, "F": 0.0})
    bad_sex = sex.isna()
    rejects.add(df[bad_sex].assign(raw=df.loc[bad_sex, "gender"]), src, "male", "malformed:gender")
    age = pd.to_numeric(df["anchor_age"], errors="coerce")
    year = pd.to_numeric(df["anchor_year"], errors="coerce")
    bad_age = age.isna() | year.isna() | (year < 1800) | (year > 2250)
    rejects.add(df[bad_age].assign(raw=df.loc[bad_age, "anchor_age"] + "@"
                                   + df.loc[bad_age, "anchor_year"].fillna("")),
                src, "age", "malformed:anchor_age/anchor_year")
    ok = ~bad_age
    mid_year = pd.to_datetime(year[ok].astype(int).astype(str) + "-07-01", utc=True)
    frames = [
        _obs(df.loc[~bad_sex, "patient_id"], "male", sex[~bad_sex], pd.NaT, FLOOR, src),
        _obs(df.loc[ok, "patient_id"], "age", age[ok], mid_year.values, FLOOR, src),
    ]
    # A patient listed twice with different sex or anchor age: rejected, never averaged.
    return drop_conflicts(pd.concat(frames, ignore_index=True), rejects), \
        sorted(set(df["patient_id"]))


def load_omr(hosp: Path, rejects: Rejects) -> pd.DataFrame:
    src = "mimic:omr"
    df = _subject_ids(read_csv(_table(hosp, "omr"),
                                     ["subject_id", "chartdate", "result_name", "result_value"],
                                     dtype=str), src, rejects)
    day = pd.to_datetime(df["chartdate"], errors="coerce", format="%Y-%m-%d", utc=True)
    bad_day = day.isna()
    rejects.add(df[bad_day].assign(raw=df.loc[bad_day, "chartdate"]), src, "*",
                "malformed:chartdate")
    df = df[~bad_day].assign(day=day[~bad_day])
    name = df["result_name"].fillna("").str.strip()
    frames = []
    bp = df[name.str.startswith("Blood Pressure")]
    parts = bp["result_value"].fillna("").str.extract(BP_PATTERN).astype(float)
    bad_bp = parts[0].isna()
    rejects.add(bp[bad_bp].assign(raw=bp.loc[bad_bp, "result_value"]), src, "sbp/dbp",
                "malformed:blood_pressure")
    inverted = ~bad_bp & (parts[0] <= parts[1])
    rejects.add(bp[inverted].assign(raw=bp.loc[inverted, "result_value"]), src, "sbp/dbp",
                "implausible:sbp<=dbp")
    good = ~bad_bp & ~inverted
    frames += [_obs(bp.loc[good, "patient_id"], "sbp", parts.loc[good, 0], bp.loc[good, "day"],
                    None, src),
               _obs(bp.loc[good, "patient_id"], "dbp", parts.loc[good, 1], bp.loc[good, "day"],
                    None, src)]
    for result_name, (feature, factor) in OMR_SIMPLE.items():
        part = df[name == result_name]
        val = pd.to_numeric(part["result_value"], errors="coerce")
        bad = val.isna()
        rejects.add(part[bad].assign(raw=part.loc[bad, "result_value"]), src, feature,
                    "malformed:value")
        frames.append(_obs(part.loc[~bad, "patient_id"], feature, val[~bad] * factor,
                           part.loc[~bad, "day"], None, src))
    unused = ~(name.str.startswith("Blood Pressure") | name.isin(list(OMR_SIMPLE)))
    if unused.any():
        log.info("omr: %d rows of unused result names ignored", int(unused.sum()))
    out = pd.concat(frames, ignore_index=True)
    # End of the chart day: values of a date are usable only once that day is over.
    out["known_at"] = out["observed_at"] + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    return out


def _daily_mean(obs: pd.DataFrame) -> pd.DataFrame:
    """Several readings of one feature on one day -> their mean (after plausibility)."""
    if obs.empty:
        return obs
    keys = ["patient_id", "feature", "observed_at", "known_at", "source"]
    return obs.groupby(keys, as_index=False, sort=False)["value"].mean()[OBS_COLUMNS]


def load_labs(hosp: Path, rejects: Rejects) -> pd.DataFrame:
    src = "mimic:labevents"
    cols = ["subject_id", "itemid", "charttime", "storetime", "value", "valuenum", "valueuom"]
    frames = []
    for chunk in read_csv_chunks(_table(hosp, "labevents"), cols, LAB_CHUNK_ROWS,
                                 usecols=cols, dtype=str):
        item = pd.to_numeric(chunk["itemid"], errors="coerce")
        chunk = chunk[item.isin(list(LAB_ITEMS))].assign(itemid=item)
        if not chunk.empty:
            frames.append(chunk)
    if not frames:
        return empty_observations()
    df = _subject_ids(pd.concat(frames, ignore_index=True), src, rejects)
    df["feature"] = df["itemid"].map(LAB_ITEMS)
    out = []
    for feature, part in df.groupby("feature"):
        val = pd.to_numeric(part["valuenum"], errors="coerce")
        chart = pd.to_datetime(part["charttime"], errors="coerce", utc=True)
        store = pd.to_datetime(part["storetime"], errors="coerce", utc=True)
        raw = part["value"].fillna(part["valuenum"])
        bad_val = val.isna()
        rejects.add(part[bad_val].assign(raw=raw[bad_val]), src, str(feature), "malformed:value")
        bad_time = ~bad_val & chart.isna()
        rejects.add(part[bad_time].assign(raw=part.loc[bad_time, "charttime"]), src,
                    str(feature), "malformed:charttime")
        unit = part["valueuom"].fillna("").str.strip().str.lower()
        bad_unit = ~bad_val & ~bad_time & (unit != "mg/dl")
        rejects.add(part[bad_unit].assign(raw=part.loc[bad_unit, "valueuom"]), src,
                    str(feature), "unit:not_mg/dL")
        ok = ~(bad_val | bad_time | bad_unit)
        known = store.where(store.notna(), chart)[ok]
        out.append(_obs(part.loc[ok, "patient_id"], str(feature),
                        val[ok] / MG_DL_PER_MMOL_L, chart[ok].values, known.values, src))
    return pd.concat(out, ignore_index=True)


def _code_flags(codes: pd.Series, versions: pd.Series) -> tuple[pd.Series, pd.Series]:
    c = codes.fillna("").str.strip().str.upper().str.replace(".", "", regex=False)
    v = versions.astype(str).str.strip()
    icd9, icd10 = v == "9", v == "10"
    smoker = ((icd9 & c.isin(SMOKING_ICD9))
              | (icd10 & (c.str.startswith(SMOKING_ICD10_PREFIX)
                          | c.isin(SMOKING_ICD10_EXACT))))
    smoker &= ~c.isin(FORMER_SMOKER)
    diabetes = ((icd9 & c.str.startswith(DIABETES_ICD9_PREFIX))
                | (icd10 & c.str.startswith(DIABETES_ICD10_PREFIX)))
    return smoker, diabetes


def load_conditions(hosp: Path, rejects: Rejects) -> pd.DataFrame:
    src = "mimic:diagnoses_icd"
    dx = _subject_ids(read_csv(_table(hosp, "diagnoses_icd"),
                                    ["subject_id", "hadm_id", "icd_code", "icd_version"],
                                    dtype=str), src, rejects)
    adm = read_csv(_table(hosp, "admissions"), ["hadm_id", "admittime", "dischtime"], dtype=str,
                   usecols=["hadm_id", "admittime", "dischtime"])
    adm["dischtime"] = pd.to_datetime(adm["dischtime"], errors="coerce", utc=True)
    adm["admittime"] = pd.to_datetime(adm["admittime"], errors="coerce", utc=True)
    dx = dx.merge(adm.drop_duplicates("hadm_id"), on="hadm_id", how="left")
    bad_version = ~dx["icd_version"].astype(str).str.strip().isin(["9", "10"])
    rejects.add(dx[bad_version].assign(raw=dx.loc[bad_version, "icd_version"]), src,
                "smoker/diabetes", "malformed:icd_version")
    no_time = ~bad_version & dx["dischtime"].isna()
    rejects.add(dx[no_time].assign(raw=dx.loc[no_time, "hadm_id"]), src, "smoker/diabetes",
                "malformed:no_dischtime")
    dx = dx[~bad_version & ~no_time].copy()
    if dx.empty:
        return empty_observations()
    dx["smoker"], dx["diabetes"] = _code_flags(dx["icd_code"], dx["icd_version"])
    per_adm = (dx.groupby(["patient_id", "hadm_id", "admittime", "dischtime"], dropna=False)
               [["smoker", "diabetes"]].max().reset_index()
               .sort_values(["patient_id", "dischtime"]))
    # Diabetes is chronic: a code at an earlier discharge still holds at later ones.
    per_adm["diabetes"] = per_adm.groupby("patient_id")["diabetes"].cummax()
    # Two admissions discharged at the same instant: the union of their codes.
    per_time = per_adm.groupby(["patient_id", "dischtime"], as_index=False).agg(
        smoker=("smoker", "max"), diabetes=("diabetes", "max"), admittime=("admittime", "min"))
    return pd.concat([
        _obs(per_time["patient_id"], f, per_time[f].astype(float), per_time["admittime"].values,
             per_time["dischtime"].values, src) for f in ("smoker", "diabetes")],
        ignore_index=True)


def run_mimic_etl(hosp_dir: str | Path, ranges: PlausibilityRanges | None = None) -> EtlResult:
    """All MIMIC sources -> plausible observations + the rejects log."""
    hosp = Path(hosp_dir)
    ranges = ranges or PlausibilityRanges()
    rejects = Rejects()
    demo, patients = load_patients(hosp, rejects)
    vitals = load_omr(hosp, rejects)
    labs = load_labs(hosp, rejects)
    conditions = load_conditions(hosp, rejects)
    measured = filter_plausible(pd.concat([vitals, labs], ignore_index=True), ranges, rejects)
    demo = filter_plausible(demo, ranges, rejects)
    obs = pd.concat([demo, _daily_mean(measured), conditions], ignore_index=True)
    obs = check_observations(obs)
    log.info("MIMIC ETL: %d patients, %d observations, %d rejected values",
             len(patients), len(obs), len(rejects.rows))
    return EtlResult(obs, rejects, patients)
