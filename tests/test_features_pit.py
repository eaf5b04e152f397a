"""Feature store on constructed patients: point-in-time, lookback, risk == clef_model.risk,
missing fraction, unknown and time-less keys, the per-job cache, SQLite online serving.

One repository is built for the module (Feast imports take ~8 s; apply+materialise a few more).
"""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from clef_model.risk import score2, score2_with_missing
from clef_platform.features.config import FeatureStoreConfig
from clef_platform.features.schema import FLOOR

T0 = pd.Timestamp("2150-03-01 12:00", tz="UTC")
YEAR_S = 365.25 * 86400
TTL = {"demographics": timedelta(0), "vitals": timedelta(days=30),
       "labs": timedelta(days=365), "conditions": timedelta(days=365)}


def _o(pid, feature, value, known, observed=None, source="test"):
    return {"patient_id": pid, "feature": feature, "value": float(value),
            "observed_at": observed if observed is not None else known, "known_at": known,
            "source": source}


def constructed_observations() -> pd.DataFrame:
    rows = []
    # "pit": one SBP known at T0 and a weight 10 days later (a newer row must not hide the SBP).
    rows += [_o("t/pit", "age", 55, FLOOR, observed=T0), _o("t/pit", "male", 1, FLOOR),
             _o("t/pit", "sbp", 170, T0), _o("t/pit", "weight_kg", 80, T0 + pd.Timedelta(days=10))]
    # "full": every SCORE2 input, age stated at T0.
    rows += [_o("t/full", "age", 64, FLOOR, observed=T0), _o("t/full", "male", 0, FLOOR),
             _o("t/full", "sbp", 150, T0 - pd.Timedelta(days=3)),
             _o("t/full", "sbp", 138, T0 - pd.Timedelta(days=1)),
             _o("t/full", "total_chol", 6.4, T0 - pd.Timedelta(days=20)),
             _o("t/full", "hdl", 1.1, T0 - pd.Timedelta(days=20)),
             _o("t/full", "smoker", 1, T0 - pd.Timedelta(days=100)),
             _o("t/full", "diabetes", 1, T0 - pd.Timedelta(days=100))]
    # "old" is 74: SCORE2-OP; no labs (2 of 7 missing); a lipid panel only after the ECG.
    rows += [_o("t/old", "age", 74, FLOOR, observed=T0), _o("t/old", "male", 1, FLOOR),
             _o("t/old", "sbp", 145, T0 - pd.Timedelta(days=2)),
             _o("t/old", "smoker", 0, T0 - pd.Timedelta(days=50)),
             _o("t/old", "diabetes", 0, T0 - pd.Timedelta(days=50)),
             _o("t/old", "total_chol", 7.0, T0 + pd.Timedelta(seconds=1)),
             _o("t/old", "hdl", 0.9, T0 + pd.Timedelta(seconds=1))]
    # A header-only patient (LUDB-like): age and sex without a time.
    rows += [_o("ludb/1", "age", 61, FLOOR, observed=pd.NaT, source="manifest"),
             _o("ludb/1", "male", 0, FLOOR, source="manifest")]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from clef_platform.features.build import build_from_observations
    from clef_platform.features.client import RiskClient

    repo = tmp_path_factory.mktemp("fs_pit") / "repo"
    cfg = FeatureStoreConfig(ttl=TTL)
    build_from_observations(repo, constructed_observations(), cfg)
    return RiskClient(repo)


def _one(client, pid, t):
    return client.lookup([(pid, t)]).iloc[0]


def test_point_in_time_and_lookback(client):
    sbp_known = T0
    just_before = _one(client, "t/pit", sbp_known - pd.Timedelta(seconds=1))
    assert np.isnan(just_before["sbp_at_ecg"]), "an observation just after the ECG leaked"
    at = _one(client, "t/pit", sbp_known)
    assert at["sbp_at_ecg"] == 170, "an observation at the ECG time is usable"
    # 20 days later: a weight row (day 10) is newer, the SBP (day 0) is within 30 days.
    within = _one(client, "t/pit", sbp_known + pd.Timedelta(days=20))
    assert within["sbp_at_ecg"] == 170
    outside = _one(client, "t/pit", sbp_known + pd.Timedelta(days=31))
    assert np.isnan(outside["sbp_at_ecg"]), "an observation outside the lookback was used"
    # Demographics never expire (ttl 0) and the age follows the ECG time.
    later = sbp_known + pd.Timedelta(days=3 * 365)
    row = _one(client, "t/pit", later)
    assert row["age_at_ecg"] == pytest.approx(55 + (later - T0).total_seconds() / YEAR_S)
    assert row["male_at_ecg"] == 1.0
    assert client.stats.feast_dropped == 0


def test_risk_equals_clef_model_risk(client):
    t = T0 + pd.Timedelta(hours=2)
    row = _one(client, "t/full", t)
    age = 64 + (t - T0).total_seconds() / YEAR_S
    expected = score2(age, False, True, 138, 6.4, 1.1, True)
    assert row["missing_fraction"] == 0.0
    assert row["risk"] == pytest.approx(expected, rel=1e-12)
    assert row["sbp_at_ecg"] == 138   # the latest reading, not the earlier one
    # SCORE2-OP patient: labs known one second after the ECG are missing (2/7).
    row = _one(client, "t/old", T0)
    exp_risk, exp_miss = score2_with_missing(74.0, 1, 0, 145, np.nan, np.nan, 0)
    assert row["missing_fraction"] == pytest.approx(2 / 7) == exp_miss
    assert row["risk"] == pytest.approx(exp_risk, rel=1e-12)
    row = _one(client, "t/old", T0 + pd.Timedelta(seconds=1))
    assert row["missing_fraction"] == 0.0
    assert row["risk"] == pytest.approx(score2(74 + 1 / YEAR_S, True, False, 145, 7.0, 0.9,
                                               False), rel=1e-9)


def test_unknown_timeless_and_before_first_observation(client):
    df = client.lookup([("nobody/1", T0), ("ludb/1", ""), ("ludb/1", None),
                        ("t/full", pd.Timestamp("2100-01-01", tz="UTC"))])
    assert len(df) == 4
    all_missing = score2_with_missing(*([np.nan] * 7))
    assert df.loc[0, "missing_fraction"] == 1.0
    assert df.loc[0, "risk"] == pytest.approx(all_missing[0])
    # Time-less header record: age 61 and sex only, used as given.
    r, m = score2_with_missing(61, 0, np.nan, np.nan, np.nan, np.nan, np.nan)
    assert df.loc[1, "missing_fraction"] == pytest.approx(5 / 7) == m
    assert df.loc[1, "risk"] == pytest.approx(r, rel=1e-12)
    assert df.loc[2, "risk"] == df.loc[1, "risk"]
    # Before any measurement: demographics only (static), the row is not lost.
    assert df.loc[3, "missing_fraction"] == pytest.approx(5 / 7)
    assert df.loc[3, "age_at_ecg"] == pytest.approx(64 - (T0 - pd.Timestamp(
        "2100-01-01", tz="UTC")).total_seconds() / YEAR_S)


def test_cache_per_job(client):
    keys = [("t/full", T0), ("t/old", T0), ("nobody/2", T0)]
    first = client.lookup(keys)
    calls = client.stats.feast_calls
    risk, missing = client.risk_arrays([k[0] for k in keys] * 2, [k[1] for k in keys] * 2)
    assert client.stats.feast_calls == calls, "cached keys went back to Feast"
    np.testing.assert_allclose(risk, np.tile(first["risk"].to_numpy(np.float32), 2))
    assert missing.dtype == np.float32 and missing.shape == (6,)
    # The same instant written differently is the same key.
    client.lookup([("t/full", "2150-03-01T12:00:00+00:00"), ("t/full", "2150-03-01 12:00:00")])
    assert client.stats.feast_calls == calls


def test_online_sqlite_latest_values(client):
    # Latest rows per patient; evaluated at the patient's latest value time by default.
    df = client.online(["t/full", "ludb/1", "nobody/3"]).set_index("patient_id")
    hist = _one(client, "t/full", T0 - pd.Timedelta(days=1))
    assert df.loc["t/full", "risk"] == pytest.approx(hist["risk"], rel=1e-9)
    assert df.loc["t/full", "missing_fraction"] == 0.0
    assert df.loc["nobody/3", "missing_fraction"] == 1.0
    assert df.loc["ludb/1", "missing_fraction"] == pytest.approx(5 / 7)
