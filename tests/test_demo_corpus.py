"""The demo corpus builder: MIMIC-IV-ECG layout, every real demo patient, times inside their
admissions, labelled artificial, deterministic."""

import csv
import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import wfdb

from clef_platform.ingest.demo_corpus import (
    MARKER, MIMIC_LEAD_ORDER, DemoCorpusConfig, build_demo_corpus,
)

REPO = Path(__file__).resolve().parents[1]
LUDB = REPO / "data" / "ludb"
HOSP = REPO / "data" / "mimic-iv-demo" / "hosp"


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_full")
    plan = build_demo_corpus(DemoCorpusConfig(ludb_dir=LUDB, mimic_hosp_dir=HOSP, out_dir=out,
                                              holdout=20))
    return out, plan


def test_every_demo_patient_gets_ecgs_inside_an_admission(full):
    out, plan = full
    patients = set(pd.read_csv(HOSP / "patients.csv.gz").subject_id)
    assert len(patients) == 100
    rows = list(csv.DictReader(open(out / "record_list.csv", newline="")))
    assert list(rows[0]) == ["subject_id", "study_id", "file_name", "ecg_time", "path"]
    assert len(rows) == len(plan) == 180
    assert {int(r["subject_id"]) for r in rows} == patients
    heldout = (out / "heldout_ludb.txt").read_text().split()
    used = {a.ludb_record for a in plan}
    assert len(heldout) == 20 and not used & set(heldout) and len(used | set(heldout)) == 200
    adm = pd.read_csv(HOSP / "admissions.csv.gz")
    for a in plan:
        stay = adm[adm.hadm_id == a.hadm_id].iloc[0]
        assert stay.subject_id == a.subject_id
        assert pd.Timestamp(stay.admittime) <= pd.Timestamp(a.ecg_time) <= pd.Timestamp(stay.dischtime)


def test_layout_header_and_values_look_like_mimic(full):
    out, plan = full
    rows = list(csv.DictReader(open(out / "record_list.csv", newline="")))
    for r in rows[:10]:
        sid, study = r["subject_id"], r["study_id"]
        assert r["path"] == f"files/p{sid[:4]}/p{sid}/s{study}/{study}"
        h = wfdb.rdheader(str(out / r["path"]))
        assert tuple(h.sig_name) == MIMIC_LEAD_ORDER
        assert h.fs == 500 and h.sig_len == 5000
        assert f"{h.base_date} {h.base_time}" == r["ecg_time"]
        assert h.comments[0] == f"<subject_id>: {sid}" and MARKER in h.comments[1]
        # the signal is the LUDB record's, sample for sample (lossless, only reordered)
        a = next(a for a in plan if str(a.study_id) == study)
        src = wfdb.rdrecord(str(LUDB / "data" / a.ludb_record), physical=False)
        dst = wfdb.rdrecord(str(out / r["path"]), physical=False)
        for c, name in enumerate(dst.sig_name):
            s = [n.lower() for n in src.sig_name].index(name.lower())
            assert (dst.d_signal[:, c] == src.d_signal[:, s]).all()
            assert dst.adc_gain[c] == src.adc_gain[s] and dst.baseline[c] == src.baseline[s]


def test_labelled_artificial_everywhere(full, caplog):
    out, _ = full
    readme = (out / "README.txt").read_text()
    assert "ARTIFICIAL PAIRING FOR PLUMBING, NOT SCIENCE" in readme
    assert {r["artificial"] for r in csv.DictReader(open(out / "pairing.csv"))} == {"true"}


def test_deterministic_and_rebuildable(tmp_path, caplog):
    ludb = tmp_path / "ludb" / "data"
    ludb.mkdir(parents=True)
    for n in range(1, 9):
        for ext in (".hea", ".dat"):
            shutil.copy(LUDB / "data" / f"{n}{ext}", ludb / f"{n}{ext}")
    cfg = dict(ludb_dir=ludb.parent, mimic_hosp_dir=HOSP)
    with caplog.at_level("INFO"):
        build_demo_corpus(DemoCorpusConfig(out_dir=tmp_path / "a", **cfg))
    assert any(MARKER in m for m in caplog.messages)
    build_demo_corpus(DemoCorpusConfig(out_dir=tmp_path / "b", **cfg))
    first = tree_digest(tmp_path / "a")
    assert first == tree_digest(tmp_path / "b") and len(first) == 8 * 2 + 4
    build_demo_corpus(DemoCorpusConfig(out_dir=tmp_path / "a", **cfg))    # rebuild in place
    assert tree_digest(tmp_path / "a") == first
    other = build_demo_corpus(DemoCorpusConfig(out_dir=tmp_path / "c", seed="other", **cfg))
    assert tree_digest(tmp_path / "c") != first and len(other) == 8
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError):
        build_demo_corpus(DemoCorpusConfig(out_dir=tmp_path / "d", **cfg))


def test_job_cli_builds_and_says_artificial(tmp_path):
    import subprocess
    import sys

    ludb = tmp_path / "ludb"
    ludb.mkdir()
    for n in range(1, 4):
        for ext in (".hea", ".dat"):
            shutil.copy(LUDB / "data" / f"{n}{ext}", ludb / f"{n}{ext}")
    res = subprocess.run([sys.executable, str(REPO / "jobs" / "make_demo_corpus.py"),
                          "--ludb", str(ludb), "--mimic-hosp", str(HOSP),
                          "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, check=True)
    assert "3 records written" in res.stdout and MARKER in res.stdout
    assert MARKER in res.stderr                     # the log line
    assert len(list((tmp_path / "out").rglob("*.dat"))) == 3


def test_canonical_checksum_equals_ludbs_own(full):
    """The evaluators exclude pretraining records by signal checksum: a LUDB signal reached
    through the demo corpus must have the same canonical checksum as LUDB ingested directly."""
    from clef_platform.ingest.adapters import get_adapter
    from clef_platform.ingest.canonical import process_record
    from clef_platform.layout.shards import signal_sha256

    out, plan = full
    demo = {r.record_id: r for r in get_adapter("mimic-iv-ecg").list_records(out)}
    ludb = {r.record_id: r for r in get_adapter("ludb").list_records(LUDB)}
    for a in plan[:5]:
        via_demo = process_record(demo[str(a.study_id)])
        direct = process_record(ludb[a.ludb_record])
        assert signal_sha256(via_demo.digital) == signal_sha256(direct.digital)
        assert (via_demo.gain == direct.gain).all()
