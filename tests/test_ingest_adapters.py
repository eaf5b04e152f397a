"""Corpus adapters and canonicalisation on the real bundled data (LUDB, CinC 2021, PTB-XL,
MIMIC-IV-ECG header, the demo MIMIC-shaped fixture)."""

import csv
import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from clef_model.leads import LEADS, lead_index
from clef_platform.ingest.adapters import available_adapters, get_adapter
from clef_platform.ingest.canonical import process_record
from clef_platform.ingest.record import CanonicalRecord, Quarantined

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
LUDB = DATA / "ludb"
CINC = DATA / "cinc2021-sample"
PTBXL = DATA / "ptbxl-sample"
MIMIC_SAMPLE = DATA / "mimic-iv-ecg-sample"
HOSP = DATA / "mimic-iv-demo" / "hosp"


def assert_round_trip(rec: CanonicalRecord, source_path: str) -> None:
    """Canonical mV equal wfdb's physical signal per lead (after reordering) within the gain
    quantum, and the digital values pass through unchanged (lossless int16)."""
    w = wfdb.rdrecord(source_path)
    d = wfdb.rdrecord(source_path, physical=False)
    mv = rec.millivolts()
    assert mv.shape == (12, w.sig_len)
    for c, name in enumerate(w.sig_name):
        i = lead_index(name)
        assert i is not None, name
        quantum = 1.0 / w.adc_gain[c]
        err = np.abs(mv[i] - w.p_signal[:, c]).max()
        assert err <= 0.5 * quantum + 1e-6 * max(1.0, np.abs(w.p_signal[:, c]).max()), (name, err)
        np.testing.assert_array_equal(rec.digital[i].astype(np.int64) - int(rec.baseline[i]),
                                      d.d_signal[:, c].astype(np.int64) - int(w.baseline[c]))


# ---------------------------------------------------------------- registry


def test_registry_lists_every_adapter_module():
    assert {"wfdb", "ludb", "cinc2021", "mimic-iv-ecg", "ptb-xl"} <= set(available_adapters())
    with pytest.raises(KeyError, match="available"):
        get_adapter("no-such-corpus")
    with pytest.raises(TypeError, match="no option"):
        get_adapter("ludb", colour="blue")


# ---------------------------------------------------------------- LUDB


def test_ludb_lists_ids_patients_age_sex_from_headers():
    refs = list(get_adapter("ludb").list_records(LUDB))
    assert len(refs) == 200
    assert sorted(int(r.record_id) for r in refs) == list(range(1, 201))
    table = pd.read_csv(LUDB / "ludb.csv")
    truth = {str(int(row.ID)): (str(row.Sex).strip(), str(row.Age).strip())
             for row in table.itertuples()}
    for r in refs:
        assert r.corpus == "ludb" and r.patient_id == f"ludb/{r.record_id}"
        assert Path(r.source_path + ".hea").is_file()
        sex, age = truth[r.record_id]
        assert r.sex == sex
        # ludb.csv writes ">89" where the header says 90
        assert r.age == (90.0 if age == ">89" else float(age)), (r.record_id, r.age, age)
        assert r.ecg_time == ""
    first = next(r for r in refs if r.record_id == "1")
    assert first.labels["diagnoses"][0] == "Rhythm: Sinus bradycardia"
    assert "Left ventricular hypertrophy" in first.labels["diagnoses"]


def test_generic_wfdb_adapter_takes_a_corpus_name():
    refs = list(get_adapter("wfdb", corpus="ludb2").list_records(LUDB / "data"))
    assert len(refs) == 200
    assert {r.patient_id for r in refs} == {f"ludb2/{i}" for i in range(1, 201)}


@pytest.mark.parametrize("record", ["1", "17", "34", "200"])
def test_ludb_canonical_order_and_values_round_trip(record):
    ref = next(r for r in get_adapter("ludb").list_records(LUDB) if r.record_id == record)
    rec = process_record(ref)
    assert isinstance(rec, CanonicalRecord), rec
    assert rec.digital.dtype == np.int16 and rec.digital.shape == (12, 5000)
    assert rec.lead_mask.all() and rec.fs_original == 500.0
    assert rec.quality_flags == {}
    assert_round_trip(rec, ref.source_path)


# ---------------------------------------------------------------- CinC 2021 (.mat)


def test_cinc_lists_ids_age_sex_dx():
    refs = list(get_adapter("cinc2021").list_records(CINC))
    assert len(refs) == 50
    ids = sorted(r.record_id for r in refs)
    assert ids[:2] == ["E07500", "E07501"] and ids[-1] == "JS20019"
    for r in refs:
        assert r.patient_id == f"cinc2021/{r.record_id}"
        comments = dict(c.split(":", 1) for c in wfdb.rdheader(r.source_path).comments)
        age = comments["Age"].strip()
        assert r.age == (None if age == "NaN" else float(age))
        assert r.sex == {"Male": "M", "Female": "F"}.get(comments["Sex"].strip())
        assert r.labels["snomed_ct"] == comments["Dx"].strip().split(",")
    e = next(r for r in refs if r.record_id == "E07500")
    assert (e.age, e.sex, e.labels["snomed_ct"]) == (78.0, "M", ["67741000119109", "426177001"])


def test_cinc_all_records_round_trip():
    refs = list(get_adapter("cinc2021").list_records(CINC))
    flagged = {}
    for ref in refs:
        rec = process_record(ref)
        assert isinstance(rec, CanonicalRecord), rec
        assert_round_trip(rec, ref.source_path)   # masked leads keep their samples too
        if rec.quality_flags:
            flagged[ref.record_id] = rec.quality_flags
            w = wfdb.rdrecord(ref.source_path)
            for lead in rec.quality_flags:
                c = [lead_index(n) for n in w.sig_name].index(LEADS.index(lead))
                assert np.ptp(w.p_signal[:, c]) == 0.0      # really flat in the source
                assert not rec.lead_mask[LEADS.index(lead)]
        else:
            assert rec.lead_mask.all()
    # Two Ningbo records really carry flat V2, V4, V6 (all zeros): masked, record kept.
    assert flagged == {r: {"V2": ["flat"], "V4": ["flat"], "V6": ["flat"]}
                       for r in ("JS20004", "JS20008")}


# ---------------------------------------------------------------- PTB-XL (100 Hz)


def test_ptbxl_lists_table_and_resamples_100hz():
    refs = list(get_adapter("ptb-xl").list_records(PTBXL))
    assert [r.record_id for r in refs] == ["1"] + [str(i) for i in range(6000, 6010)]
    r1 = refs[0]
    assert r1.patient_id == "ptb-xl/15709"
    assert (r1.ecg_time, r1.age, r1.sex) == ("1984-11-09T09:17:34", 56.0, "F")
    assert r1.labels["scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    assert r1.labels["diagnostic_superclass"] == ["NORM"]
    assert r1.source_path.endswith("records100/00000/00001_lr")   # no records500 in the sample

    rec = process_record(r1)
    assert isinstance(rec, CanonicalRecord), rec
    assert rec.fs_original == 100.0 and rec.digital.shape == (12, 5000)
    assert rec.quality_flags["record"] == ["resampled_from_100Hz"]
    assert rec.lead_mask.all()
    # canonical order despite PTB-XL's upper-case AVR/AVL/AVF; the 500 Hz signal taken every
    # 5th sample is the 100 Hz one (polyphase interpolation keeps the original samples up to
    # the filter's ripple) within a few gain quanta
    w = wfdb.rdrecord(r1.source_path)
    mv = rec.millivolts()
    for c, name in enumerate(w.sig_name):
        i = lead_index(name)
        assert np.abs(mv[i, ::5] - w.p_signal[:, c]).max() < 0.05, name
        assert np.corrcoef(mv[i, ::5], w.p_signal[:, c])[0, 1] > 0.999, name
    # the other rows have no signal files in the sample: quarantined, not dropped
    for r in refs[1:]:
        q = process_record(r)
        assert isinstance(q, Quarantined) and q.reason == "missing_header_file"
        assert r.source_path.endswith("_hr") and "_hr.hea" in q.detail


def test_ptbxl_scp_codes_are_literals_never_evaluated(tmp_path):
    src = PTBXL / "ptbxl_database_subset.csv"
    rows = list(csv.DictReader(open(src, newline="")))
    rows[0]["scp_codes"] = "__import__('os').system('touch " + str(tmp_path / "pwned") + "')"
    rows[1]["age"] = "300"          # PTB-XL's code for ages above 89
    with open(tmp_path / "ptbxl_database.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    refs = list(get_adapter("ptb-xl").list_records(tmp_path))
    assert not (tmp_path / "pwned").exists()
    assert "scp_codes" not in refs[0].labels and "scp_codes_error" in refs[0].labels
    assert refs[1].age == 90.0 and refs[1].labels["age_over_89"] is True


# ---------------------------------------------------------------- MIMIC-IV-ECG


def test_real_mimic_header_lists_and_is_quarantined_without_its_dat():
    refs = list(get_adapter("mimic-iv-ecg").list_records(MIMIC_SAMPLE))
    assert len(refs) == 1
    r = refs[0]
    assert (r.record_id, r.patient_id) == ("40689238", "mimic-iv-ecg/10000032")
    assert r.native_ids["subject_id"] == "10000032" and r.native_ids["study_id"] == "40689238"
    assert r.ecg_time == "2180-07-23T08:44:00"
    q = process_record(r)
    assert isinstance(q, Quarantined) and q.reason == "missing_signal_file"
    assert "40689238.dat" in q.detail


def test_mimic_without_record_list_walks_files_and_reads_header_time(tmp_path):
    shutil.copytree(MIMIC_SAMPLE / "files", tmp_path / "files")
    (r,) = list(get_adapter("mimic-iv-ecg").list_records(tmp_path))
    assert (r.record_id, r.patient_id, r.ecg_time) == (
        "40689238", "mimic-iv-ecg/10000032", "2180-07-23T08:44:00")


def test_mimic_unsafe_path_is_a_bad_reference(tmp_path):
    shutil.copytree(MIMIC_SAMPLE / "files", tmp_path / "files")
    (tmp_path / "record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n"
        "10000032,40689238,40689238,2180-07-23 08:44:00,../../etc/passwd\n"
        "1000x032,40689239,40689239,2180-07-23 08:44:00,files/p1000/p1000x032/s40689239/40689239\n")
    refs = list(get_adapter("mimic-iv-ecg").list_records(tmp_path))
    assert len(refs) == 2 and all(r.source_path == "" for r in refs)
    for r in refs:
        q = process_record(r)
        assert q.reason == "bad_reference"
    assert "leaves the corpus root" in process_record(refs[0]).detail


@pytest.fixture(scope="module")
def demo_fixture(tmp_path_factory):
    """A small MIMIC-shaped fixture from 12 real LUDB records and the real demo patients."""
    from clef_platform.ingest.demo_corpus import DemoCorpusConfig, build_demo_corpus

    ludb = tmp_path_factory.mktemp("ludb_subset") / "data"
    ludb.mkdir()
    for n in range(1, 13):
        for ext in (".hea", ".dat"):
            shutil.copy(LUDB / "data" / f"{n}{ext}", ludb / f"{n}{ext}")
    out = tmp_path_factory.mktemp("demo")
    build_demo_corpus(DemoCorpusConfig(ludb_dir=ludb.parent, mimic_hosp_dir=HOSP, out_dir=out))
    return out


def test_demo_fixture_lists_through_mimic_adapter_with_subject_study_time(demo_fixture):
    refs = list(get_adapter("mimic-iv-ecg").list_records(demo_fixture))
    pairing = {row["study_id"]: row for row in csv.DictReader(open(demo_fixture / "pairing.csv"))}
    assert len(refs) == 12 == len(pairing)
    adm = pd.read_csv(HOSP / "admissions.csv.gz").set_index("hadm_id")
    for r in refs:
        p = pairing[r.record_id]
        assert r.patient_id == f"mimic-iv-ecg/{p['subject_id']}"
        assert r.native_ids == {"subject_id": p["subject_id"], "study_id": p["study_id"],
                                "file_name": p["study_id"]}
        hdr = wfdb.rdheader(r.source_path)
        assert r.ecg_time == dt.datetime.combine(hdr.base_date, hdr.base_time).isoformat()
        stay = adm.loc[int(p["hadm_id"])]
        assert int(stay.subject_id) == int(p["subject_id"])
        assert stay.admittime.replace(" ", "T") <= r.ecg_time <= stay.dischtime.replace(" ", "T")


def test_demo_fixture_canonicalises_mimic_lead_order(demo_fixture):
    refs = list(get_adapter("mimic-iv-ecg").list_records(demo_fixture))
    pairing = {row["study_id"]: row["ludb_record"]
               for row in csv.DictReader(open(demo_fixture / "pairing.csv"))}
    for ref in refs[:4]:
        rec = process_record(ref)
        assert isinstance(rec, CanonicalRecord), rec
        assert rec.ref.ecg_time == ref.ecg_time and "record" not in rec.quality_flags
        assert wfdb.rdheader(ref.source_path).sig_name[4:6] == ["aVF", "aVL"]
        assert_round_trip(rec, ref.source_path)
        # and against the original LUDB signal (lower-case names, LUDB's own gains)
        ludb = wfdb.rdrecord(str(LUDB / "data" / pairing[ref.record_id]))
        mv = rec.millivolts()
        for c, name in enumerate(ludb.sig_name):
            i = lead_index(name)
            assert np.abs(mv[i] - ludb.p_signal[:, c]).max() <= 0.5 / 200 + 0.5 / ludb.adc_gain[c] + 1e-5
        assert LEADS[4] == "aVL" and lead_index("avl") == 4
