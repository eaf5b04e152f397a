"""Header demographics (age and sex at recording) from the ingest manifest -> observations.

The manifest is the ingestion job's Parquet index: record_id, patient_id (namespaced
"corpus/native"), corpus, ecg_time (ISO string or ""), age, sex ("M"/"F"/None), split, ...
A record with a time states age and sex at that time; a record without one (LUDB, some CinC
sets) states them with no time: they are known from FLOOR and the age is used as given.
"""

from __future__ import annotations

import logging

import pandas as pd

from clef_platform.features.config import PlausibilityRanges
from clef_platform.features.plausibility import filter_plausible
from clef_platform.features.schema import FLOOR, Rejects, check_observations

log = logging.getLogger(__name__)
MANIFEST_COLUMNS = ["record_id", "patient_id", "corpus", "ecg_time", "age", "sex"]
SOURCE = "manifest"


def read_manifest(url: str) -> pd.DataFrame:
    """The manifest of an ingested dataset, given its root or its manifest.parquet (a local path,
    file:// or s3:// URL), read through the dataset layout (committed, digest checked)."""
    from clef_platform.layout.dataset import MANIFEST_KEY, open_dataset

    url = str(url).rstrip("/")
    root = url[: -len(MANIFEST_KEY)].rstrip("/") if url.endswith("/" + MANIFEST_KEY) else url
    return check_manifest(open_dataset(root or ".").frame(), url)


def check_manifest(df: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = set(MANIFEST_COLUMNS) - set(df.columns)
    if missing:
        from clef_platform.cli import UsageError

        raise UsageError(f"manifest {what} lacks columns {sorted(missing)}")
    return df


def parse_ecg_time(values: pd.Series) -> pd.Series:
    """ISO strings -> UTC timestamps; "" / None -> NaT (no time); garbage -> NaT too (the
    caller tells the two apart by the raw value)."""
    raw = values.fillna("").astype(str).str.strip()
    return pd.to_datetime(raw.where(raw != "", None), errors="coerce", utc=True, format="ISO8601")


def manifest_observations(manifest: pd.DataFrame, ranges: PlausibilityRanges | None = None,
                          rejects: Rejects | None = None) -> tuple[pd.DataFrame, Rejects]:
    ranges = ranges or PlausibilityRanges()
    rejects = rejects if rejects is not None else Rejects()
    df = manifest.copy()
    df["patient_id"] = df["patient_id"].astype(str)
    raw_time = df["ecg_time"].fillna("").astype(str).str.strip()
    ts = parse_ecg_time(df["ecg_time"])
    bad_time = (raw_time != "") & ts.isna()
    rejects.add(df[bad_time].assign(raw=raw_time[bad_time]), SOURCE, "age/male",
                "malformed:ecg_time")
    df, ts = df[~bad_time], ts[~bad_time]
    known = ts.fillna(FLOOR)
    age = pd.to_numeric(df["age"], errors="coerce")
    bad_age = df["age"].notna() & age.isna()
    rejects.add(df[bad_age].assign(raw=df.loc[bad_age, "age"]), SOURCE, "age", "malformed:age")
    sex_raw = df["sex"].astype(object).where(df["sex"].notna(), None)
    sex = sex_raw.map(lambda s: None if s is None else str(s).strip().upper()[:1])
    male = sex.map({"M": 1.0, "F": 0.0})
    bad_sex = sex.notna() & male.isna()
    rejects.add(df[bad_sex].assign(raw=sex_raw[bad_sex]), SOURCE, "male", "malformed:sex")
    has_age, has_sex = age.notna(), male.notna()
    obs = pd.concat([
        pd.DataFrame({"patient_id": df.loc[has_age, "patient_id"], "feature": "age",
                      "value": age[has_age], "observed_at": ts[has_age],
                      "known_at": known[has_age], "source": SOURCE}),
        pd.DataFrame({"patient_id": df.loc[has_sex, "patient_id"], "feature": "male",
                      "value": male[has_sex], "observed_at": ts[has_sex],
                      "known_at": known[has_sex], "source": SOURCE}),
    ], ignore_index=True)
    obs = filter_plausible(obs, ranges, rejects)
    obs = drop_conflicts(obs, rejects)
    # Several records of a patient at one instant (or several time-less ones) state one fact
    # (drop_conflicts left only groups that agree, so "mean" is that one value).
    obs = obs.groupby(["patient_id", "feature", "known_at"], as_index=False, dropna=False).agg(
        value=("value", "mean"), observed_at=("observed_at", "first"), source=("source", "first"))
    log.info("manifest: %d records, %d patients, %d header observations",
             len(manifest), manifest["patient_id"].nunique(), len(obs))
    return check_observations(obs), rejects


def drop_conflicts(obs: pd.DataFrame, rejects: Rejects) -> pd.DataFrame:
    """Rows of one patient, feature and instant that disagree (two records of a patient, one
    male and one female) are rejected with reason "conflict:<values>", never averaged into
    male = 0.5."""
    key = ["patient_id", "feature", "known_at"]
    distinct = obs.groupby(key, dropna=False)["value"].transform("nunique")
    conflict = distinct > 1
    for (feature, source), part in obs[conflict].groupby(["feature", "source"]):
        values = part.groupby("patient_id")["value"].agg(lambda v: "/".join(
            f"{x:g}" for x in sorted(set(v))))
        rejects.add(part.assign(raw=part["patient_id"].map(values)), source, feature,
                    "conflict:duplicate rows disagree")
    if conflict.any():
        log.warning("rejected %d rows of %d patients whose duplicates disagree (rejects.csv: "
                    "conflict)", int(conflict.sum()), obs.loc[conflict, "patient_id"].nunique())
    return obs[~conflict]


def manifest_patients(manifest: pd.DataFrame) -> list[str]:
    return sorted(set(manifest["patient_id"].astype(str)))


def manifest_keys(manifest: pd.DataFrame) -> list[tuple[str, str]]:
    """(patient_id, ecg_time) per record, the keys the trainer and evaluators look up."""
    times = manifest["ecg_time"].fillna("").astype(str)
    return list(zip(manifest["patient_id"].astype(str), times))


__all__ = ["read_manifest", "manifest_observations", "manifest_patients", "manifest_keys",
           "parse_ecg_time"]
