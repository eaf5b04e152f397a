"""Feature ETL on the real MIMIC-IV demo hosp tables, and risk at real ECG times through the
client compared with clef_model.risk applied by hand to the raw rows valid at each time."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clef_model.risk import score2_with_missing
from clef_platform.features.config import FeatureStoreConfig
from clef_platform.features.mimic_etl import run_mimic_etl

ROOT = Path(__file__).resolve().parents[1]
HOSP = ROOT / "data" / "mimic-iv-demo" / "hosp"
ECG_LIST = ROOT / "data" / "mimic-iv-ecg-sample" / "record_list.csv"
YEAR_S = 365.25 * 86400


def _raw(name, **kw):
    return pd.read_csv(HOSP / f"{name}.csv.gz", **kw)


@pytest.fixture(scope="module")
def etl():
    return run_mimic_etl(HOSP)


def _patients_with(obs, feature):
    return set(obs.loc[obs["feature"] == feature, "patient_id"])


def test_raw_demo_coverage():
    # The figures the issue measured on the raw tables (before plausibility filtering).
    omr = _raw("omr")
    labs = _raw("labevents", usecols=["subject_id", "itemid"])
    bp = set(omr.loc[omr["result_name"].str.startswith("Blood Pressure"), "subject_id"])
    tc = set(labs.loc[labs["itemid"] == 50907, "subject_id"])
    hdl = set(labs.loc[labs["itemid"] == 50904, "subject_id"])
    assert (len(_raw("patients")), len(bp), len(tc), len(hdl), len(bp & tc & hdl)) == \
        (100, 70, 29, 30, 27)


def test_etl_coverage_and_rejects(etl):
    obs = etl.observations
    assert len(etl.patients) == 100
    assert len(_patients_with(obs, "age")) == 100 and len(_patients_with(obs, "male")) == 100
    sbp, tc, hdl = (_patients_with(obs, f) for f in ("sbp", "total_chol", "hdl"))
    # Nobody loses all their values to the filters: coverage equals the raw figures.
    assert (len(sbp), len(tc), len(hdl), len(sbp & tc & hdl)) == (70, 29, 30, 27)
    assert _patients_with(obs, "dbp") == sbp
    # Every value carries its time; omr values are known at the end of their day.
    assert obs["known_at"].notna().all()
    omr_rows = obs[obs["source"] == "mimic:omr"]
    assert (omr_rows["known_at"] - omr_rows["observed_at"]
            == pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)).all()
    # Exactly the demo's known bad values are dropped, each with its reason.
    rej = etl.rejects.frame()
    counts = rej.groupby(["feature", "reason"]).size().to_dict()
    assert counts == {("bmi", "implausible:outside[10,80]"): 1,
                      ("height_cm", "implausible:outside[120,230]"): 1,
                      ("hdl", "malformed:value"): 2}
    assert float(rej.loc[rej["feature"] == "bmi", "raw"].iloc[0]) == pytest.approx(4649.4)
    assert float(rej.loc[rej["feature"] == "height_cm", "raw"].iloc[0]) == pytest.approx(12.7)
    # Units: cholesterol in mmol/L, the raw maxima converted.
    labs = _raw("labevents", usecols=["itemid", "valuenum"])
    assert obs.loc[obs["feature"] == "total_chol", "value"].max() == pytest.approx(
        labs.loc[labs["itemid"] == 50907, "valuenum"].max() / 38.67)


def test_malformed_rows_reported_not_raised(tmp_path, etl):
    hosp = tmp_path / "hosp"
    shutil.copytree(HOSP, hosp)
    omr = _raw("omr")
    bad_omr = pd.DataFrame({
        "subject_id": [10000032, 10000032, 10000032, "x1"],
        "chartdate": ["2180-01-01", "not-a-date", "2180-01-02", "2180-01-03"],
        "seq_num": 1,
        "result_name": ["Blood Pressure", "Weight (Lbs)", "Weight (Lbs)", "BMI (kg/m2)"],
        "result_value": ["abc/80", "150", "heavy", "25"]})
    pd.concat([omr, bad_omr]).to_csv(hosp / "omr.csv.gz", index=False)
    labs = _raw("labevents")
    extra = labs[labs["itemid"] == 50907].head(2).copy()
    extra["valueuom"] = ["mmol/L", "mg/dL"]
    extra["valuenum"] = [5.0, np.nan]
    pd.concat([labs, extra]).to_csv(hosp / "labevents.csv.gz", index=False)
    pts = _raw("patients")
    pd.concat([pts, pd.DataFrame({"subject_id": [99999999], "gender": ["U"], "anchor_age":
                                  ["old"], "anchor_year": [2150]})]).to_csv(
        hosp / "patients.csv.gz", index=False)
    res = run_mimic_etl(hosp)
    got = res.rejects.frame().groupby(["source", "reason"]).size().to_dict()
    assert got[("mimic:omr", "malformed:blood_pressure")] == 1
    assert got[("mimic:omr", "malformed:chartdate")] == 1
    assert got[("mimic:omr", "malformed:value")] == 1
    assert got[("mimic:omr", "malformed:subject_id")] == 1
    assert got[("mimic:labevents", "unit:not_mg/dL")] == 1
    assert got[("mimic:labevents", "malformed:value")] == 3          # 2 in the demo + 1
    assert got[("mimic:patients", "malformed:gender")] == 1
    assert got[("mimic:patients", "malformed:anchor_age/anchor_year")] == 1
    # The valid rows are untouched.
    for f in ("sbp", "total_chol", "hdl", "smoker"):
        assert (res.observations["feature"] == f).sum() == (etl.observations["feature"] == f).sum()


# ---- risk through the client vs by hand ------------------------------------------------------

def _by_hand(subject: int, t: pd.Timestamp, ttl_days: dict) -> tuple[float, float, dict]:
    """clef_model.risk on the raw rows valid at t, written independently of the ETL."""
    pts = _raw("patients").set_index("subject_id")
    p = pts.loc[subject]
    age = p["anchor_age"] + (t - pd.Timestamp(f"{p['anchor_year']}-07-01", tz="UTC")
                             ).total_seconds() / YEAR_S
    male = 1.0 if p["gender"] == "M" else 0.0
    omr = _raw("omr")
    bp = omr[(omr["subject_id"] == subject) & omr["result_name"].str.startswith("Blood Pressure")]
    bp = bp.assign(end=pd.to_datetime(bp["chartdate"], utc=True) + pd.Timedelta(days=1)
                   - pd.Timedelta(microseconds=1),
                   sbp=bp["result_value"].str.split("/").str[0].astype(float))
    bp = bp[(bp["end"] <= t) & (bp["end"] >= t - pd.Timedelta(days=ttl_days["vitals"]))]
    sbp = bp.loc[bp["end"] == bp["end"].max(), "sbp"].mean() if len(bp) else np.nan
    labs = _raw("labevents", usecols=["subject_id", "itemid", "charttime", "storetime",
                                      "valuenum"])
    labs = labs[(labs["subject_id"] == subject) & labs["valuenum"].notna()]
    labs = labs.assign(known=pd.to_datetime(labs["storetime"], utc=True))
    labs = labs[(labs["known"] <= t) & (labs["known"] >= t - pd.Timedelta(days=ttl_days["labs"]))]
    lipids = {}
    for item, name in ((50907, "tc"), (50904, "hdl")):
        part = labs[labs["itemid"] == item]
        lipids[name] = (part.loc[part["known"] == part["known"].max(), "valuenum"].mean() / 38.67
                        if len(part) else np.nan)
    adm = _raw("admissions", usecols=["hadm_id", "dischtime"])
    adm["dischtime"] = pd.to_datetime(adm["dischtime"], utc=True)
    dx = _raw("diagnoses_icd", dtype={"icd_code": str})
    dx = dx[dx["subject_id"] == subject].merge(adm, on="hadm_id")
    dx = dx[dx["dischtime"] <= t]
    smoker = diabetes = np.nan
    if len(dx) and dx["dischtime"].max() >= t - pd.Timedelta(days=ttl_days["conditions"]):
        last = dx[dx["dischtime"] == dx["dischtime"].max()]
        code, ver = last["icd_code"].str.strip(), last["icd_version"]
        smoker = float((((ver == 9) & (code == "3051"))
                        | ((ver == 10) & (code.str.startswith("F17") | (code == "Z720")))).any())
        code, ver = dx["icd_code"].str.strip(), dx["icd_version"]
        diabetes = float((((ver == 9) & code.str.startswith("250"))
                          | ((ver == 10) & code.str[:3].isin(["E08", "E09", "E10", "E11", "E13"]))
                          ).any())
    inputs = dict(age=age, male=male, smoker=smoker, sbp=sbp, total_chol=lipids["tc"],
                  hdl=lipids["hdl"], diabetes=diabetes)
    risk, missing = score2_with_missing(**inputs)
    return risk, missing, inputs


@pytest.fixture(scope="module")
def demo_keys():
    ecgs = pd.read_csv(ECG_LIST)
    keys = [(int(s), pd.Timestamp(t, tz="UTC")) for s, t in zip(ecgs["subject_id"],
                                                                 ecgs["ecg_time"])]
    # Four more patients with BP and lipids, one hour after their first lipid result, and one
    # of them again 20 years later (values beyond their lookback).
    labs = _raw("labevents", usecols=["subject_id", "itemid", "storetime"])
    labs = labs[labs["itemid"] == 50907]
    first = labs.groupby("subject_id")["storetime"].min().sort_index()
    for s in first.index[:4]:
        keys.append((int(s), pd.Timestamp(first[s], tz="UTC") + pd.Timedelta(hours=1)))
    keys.append((keys[-1][0], keys[-1][1] + pd.Timedelta(days=20 * 365)))
    return keys


@pytest.fixture(scope="module")
def demo_client(tmp_path_factory, demo_keys):
    from clef_platform.features.build import build_feature_store
    from clef_platform.features.client import RiskClient

    tmp = tmp_path_factory.mktemp("fs_mimic")
    ecgs = pd.read_csv(ECG_LIST)
    manifest = pd.DataFrame({
        "record_id": ecgs["study_id"].astype(str),
        "patient_id": "mimic-iv-ecg/" + ecgs["subject_id"].astype(str),
        "corpus": "mimic-iv-ecg", "ecg_time": pd.to_datetime(ecgs["ecg_time"]).dt.strftime(
            "%Y-%m-%dT%H:%M:%S"),
        "age": pd.Series([np.nan] * len(ecgs), dtype=float), "sex": None, "split": "train"})
    # MIMIC-IV-ECG's record list has no waveforms here: its rows go in as a table, not as a
    # dataset (an ingested dataset is read through the layout, shards and digests included).
    result = build_feature_store(tmp / "repo", FeatureStoreConfig(), mimic_hosp=HOSP,
                                 manifest=manifest)
    return RiskClient(result.repo), result, manifest


def test_demo_risk_matches_hand_computation(demo_client, demo_keys):
    client, result, _ = demo_client
    ttl_days = {k: v / 86400 for k, v in client.ttl_seconds.items()}
    got = client.lookup([(f"mimic-iv-ecg/{s}", t) for s, t in demo_keys])
    n_complete = 0
    for (subject, t), (_, row) in zip(demo_keys, got.iterrows()):
        risk, missing, inputs = _by_hand(subject, t, ttl_days)
        for name, value in inputs.items():
            np.testing.assert_allclose(row[f"{name}_at_ecg"], value, rtol=1e-9,
                                       err_msg=f"{subject} {t} {name}")
        assert row["missing_fraction"] == pytest.approx(missing), (subject, t)
        assert row["risk"] == pytest.approx(risk, rel=1e-9), (subject, t)
        n_complete += missing == 0
    assert n_complete >= 2, "the chosen keys should include fully observed patients"
    assert got["missing_fraction"].iloc[-1] > got["missing_fraction"].iloc[-2]
    assert client.stats.feast_dropped == 0


def test_build_summary(demo_client):
    _, result, _ = demo_client
    s = result.summary
    assert s["patients"] == 100
    assert s["coverage"]["sbp"]["patients"] == 70
    assert s["coverage"]["total_chol"]["patients"] == 29
    assert s["coverage"]["hdl"]["patients"] == 30
    assert s["rejected"]["mimic:omr|bmi|implausible:outside[10,80]"] == 1
    assert s["risk_at_ecgs"]["risk"]["n"] == 1
    assert 0 < s["risk_latest"]["risk"]["p50"] < 1
    assert (result.repo / "data" / "summary.json").exists()


def test_rebuild_is_idempotent(demo_client, demo_keys):
    from clef_platform.features.build import build_feature_store
    from clef_platform.features.client import RiskClient

    client, first, manifest = demo_client
    tables = {v: pd.read_parquet(first.repo / "data" / f"{v}.parquet")
              for v in ("demographics", "vitals", "labs", "conditions")}
    again = build_feature_store(first.repo, FeatureStoreConfig(), mimic_hosp=HOSP,
                                manifest=manifest)
    assert again.summary == first.summary
    for view, table in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(again.repo / "data" / f"{view}.parquet"),
                                      table)
    keys = [(f"mimic-iv-ecg/{s}", t) for s, t in demo_keys]
    pd.testing.assert_frame_equal(RiskClient(again.repo).lookup(keys), client.lookup(keys))


def test_repository_moves_and_travels_through_s3(demo_client, demo_keys, moto_s3, tmp_path):
    # A cluster's hosts share no disk: the repository is published to S3 and each host reads its
    # own copy. Paths inside it are relative, so a copy anywhere answers like the original.
    import uuid

    import boto3

    from clef_platform.features.client import RiskClient
    from clef_platform.features.repo import publish_repo
    from clef_platform.mirror import INDEX

    client, first, _ = demo_client
    keys = [(f"mimic-iv-ecg/{s}", t) for s, t in demo_keys]
    want = client.lookup(keys)

    moved = tmp_path / "elsewhere"
    shutil.copytree(first.repo, moved)
    hidden = first.repo.with_name("repo-hidden")
    first.repo.rename(hidden)          # the original's absolute paths no longer exist
    try:
        pd.testing.assert_frame_equal(RiskClient(moved).lookup(keys), want)
        bucket = f"fs-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/features"
        publish_repo(moved, url)
        shutil.rmtree(moved)
        remote = RiskClient(url)
        assert remote.repo != moved and (remote.repo / "feature_store.yaml").exists()
        pd.testing.assert_frame_equal(remote.lookup(keys), want)
        # a second reader on the same host reuses the copy; a file that differs from the
        # index is refused, naming it
        assert RiskClient(url).repo == remote.repo
        s3 = boto3.client("s3")
        s3.put_object(Bucket=bucket, Key="features/data/labs.parquet", Body=b"not parquet")
        body = s3.get_object(Bucket=bucket, Key=f"features/{INDEX}")["Body"].read()
        s3.put_object(Bucket=bucket, Key=f"features/{INDEX}", Body=body + b"\n")  # new version
        with pytest.raises(RuntimeError, match="data/labs.parquet: SHA-256 differs"):
            RiskClient(url)
    finally:
        hidden.rename(first.repo)
