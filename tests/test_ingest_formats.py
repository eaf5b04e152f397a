"""Source formats beyond WFDB (issue 14): every reader is registered the same way
(clef_platform.ingest.readers) and declared by a corpus spec's `format:`.

- CPSC 2018's original MATLAB files (data/cpsc2018-sample, five records): ids, leads, rate,
  age and sex from the struct, values within 0.5 uV of the file's millivolts.
- EDF+ written by pyedflib from real LUDB signals (record 1): leads by label, start time, sex
  and age from the patient field, the file's physical values; windows read only their span.
- BDF+ (24-bit) written the same way: re-quantised to int16 per lead, within half a step.
- A single-lead strip at 300 Hz (AliveCor-style): built from real LUDB signal (record 1,
  lead I, resampled to 300 Hz and written as a one-channel WFDB record; a fixture from a real
  signal, not a real 300 Hz recording): lead I kept, the other eleven masked.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.io as sio
import wfdb

from clef_model.leads import LEADS, lead_index
from clef_platform.ingest.canonical import process_record
from clef_platform.ingest.pipeline import IngestConfig, run_ingest
from clef_platform.ingest.readers import get_reader, readers
from clef_platform.ingest.record import CanonicalRecord
from clef_platform.ingest.spec import SpecAdapter, load_spec, parse_spec
from clef_platform.layout.dataset import MANIFEST_KEY
from tests.helpers import REPO

CPSC = REPO / "data" / "cpsc2018-sample"
CPSC_IDS = ["A1980", "A1981", "A1982", "A1983", "A1985"]


def _mat(record_id: str):
    ecg = sio.loadmat(str(CPSC / f"{record_id}.mat"))["ECG"]
    return ecg["data"][0, 0], str(ecg["sex"][0, 0][0]), float(ecg["age"][0, 0].ravel()[0])


def test_readers_are_registered_by_format_name():
    assert {"wfdb", "cpsc-mat", "edf", "bdf"} <= set(readers())
    assert get_reader("cpsc-mat").suffix == ".mat" and get_reader("wfdb").suffix == ".hea"
    with pytest.raises(KeyError, match="no reader for format 'nope'"):
        get_reader("nope")


def test_cpsc_2018_records_read_with_their_metadata_and_values():
    refs = list(SpecAdapter(load_spec(REPO / "corpora" / "cpsc2018.yaml")).list_records(CPSC))
    assert [r.record_id for r in refs] == CPSC_IDS
    for ref in refs:
        data, sex, age = _mat(ref.record_id)
        assert ref.patient_id == f"cpsc2018/{ref.record_id}" and ref.format == "cpsc-mat"
        assert ref.age == age and ref.sex == {"Male": "M", "Female": "F"}[sex]
        out = process_record(ref)
        assert isinstance(out, CanonicalRecord), out
        assert out.fs_original == 500.0 and out.digital.shape == (12, data.shape[1])
        assert out.lead_mask.all() and not out.quality_flags
        # stored at 1 uV per unit: within half a microvolt (plus float32 rounding)
        assert np.abs(out.millivolts() - data).max() <= 0.5e-3 + 1e-5


def test_a_damaged_mat_file_is_quarantined_naming_it(tmp_path):
    (tmp_path / "A0001.mat").write_bytes((CPSC / "A1980.mat").read_bytes()[:2000])
    spec = load_spec(REPO / "corpora" / "cpsc2018.yaml")
    ref, = SpecAdapter(spec).list_records(tmp_path)
    out = process_record(ref)
    assert out.reason == "garbled_header" and "A0001.mat" in out.detail, out


@pytest.mark.slow
def test_cpsc_2018_ingests_through_its_spec(ray_local, tmp_path):
    summary = run_ingest(IngestConfig("cpsc2018", CPSC, str(tmp_path / "ds"),
                                      shard_bytes=1_000_000))
    assert summary.stored == 5 and summary.quarantined == 0
    m = pq.read_table(tmp_path / "ds" / MANIFEST_KEY).to_pandas().sort_values("record_id")
    assert m["record_id"].tolist() == CPSC_IDS
    assert m["n_samples"].tolist() == [_mat(i)[0].shape[1] for i in CPSC_IDS]
    assert (m["n_leads_usable"] == 12).all() and (m["fs_original"] == 500.0).all()
    assert m["age"].tolist() == [_mat(i)[2] for i in CPSC_IDS]
    assert m["parent_record_id"].isna().all()
    assert all(len(h) == 64 for h in m["source_sha256"])


def _single_lead_strip(folder: Path) -> Path:
    """LUDB record 1's lead I resampled 500 -> 300 Hz, one WFDB channel named 'ECG'."""
    from scipy.signal import resample_poly

    src = wfdb.rdrecord(str(REPO / "data" / "ludb" / "data" / "1"))
    lead = src.p_signal[:, [n.lower() for n in src.sig_name].index("i")]
    strip = resample_poly(lead, 3, 5)[:, None]
    folder.mkdir()
    wfdb.wrsamp("strip1", fs=300, units=["mV"], sig_name=["ECG"], p_signal=strip, fmt=["16"],
                adc_gain=[1000.0], baseline=[0], write_dir=str(folder))
    return folder


def test_a_single_lead_strip_keeps_one_lead_and_masks_eleven(tmp_path):
    folder = _single_lead_strip(tmp_path / "strips")
    spec = parse_spec({"name": "wearable", "format": "wfdb", "records": "*.hea",
                       "header_comments": False, "lead_aliases": {"ECG": "I"}}, "wearable.yaml")
    ref, = SpecAdapter(spec).list_records(folder)
    out = process_record(ref)
    assert isinstance(out, CanonicalRecord), out
    assert out.fs_original == 300.0 and out.digital.shape == (12, 5000)
    assert out.lead_mask.tolist() == [name == "I" for name in LEADS]
    assert {k for k, v in out.quality_flags.items() if v == ["absent"]} == set(LEADS) - {"I"}
    assert "lead_alias:ECG->I" in out.quality_flags["record"]
    # back at 500 Hz it follows LUDB's own lead I (the 300 Hz strip keeps the ECG's band)
    ludb = wfdb.rdrecord(str(REPO / "data" / "ludb" / "data" / "1"))
    original = ludb.p_signal[:, [n.lower() for n in ludb.sig_name].index("i")]
    got = out.millivolts()[lead_index("I")]
    assert np.corrcoef(got[100:-100], original[100:-100])[0, 1] > 0.99
    assert json.dumps(out.quality_flags)      # plain JSON, as the manifest stores it


def _edf_from_ludb(folder: Path, record: str = "1", kind: str = "edf") -> Path:
    """LUDB record `record` (12 leads, 500 Hz, mV) written as EDF+ (16-bit) or BDF+ (24-bit) by
    pyedflib, the reader's own library, with physical range +-10 mV over the format's digital
    range, sex and birth date in the patient field."""
    import datetime as dt

    import pyedflib

    src = wfdb.rdrecord(str(REPO / "data" / "ludb" / "data" / record))
    folder.mkdir(exist_ok=True)
    path = folder / f"ludb{record}.{kind}"
    file_type, bits = {"edf": (pyedflib.FILETYPE_EDFPLUS, 16),
                       "bdf": (pyedflib.FILETYPE_BDFPLUS, 24)}[kind]
    w = pyedflib.EdfWriter(str(path), len(src.sig_name), file_type=file_type)
    try:
        w.setSignalHeaders([{"label": name.upper() if name.lower() != "avr" else "aVR",
                             "dimension": "mV", "sample_frequency": 500,
                             "physical_max": 10.0, "physical_min": -10.0,
                             "digital_max": 2 ** (bits - 1) - 1, "digital_min": -2 ** (bits - 1)}
                            for name in src.sig_name])
        w.setSex(1)
        w.setBirthdate(dt.date(1970, 6, 1))
        w.setStartdatetime(dt.datetime(2020, 3, 4, 5, 6, 7))
        w.writeSamples([np.ascontiguousarray(src.p_signal[:, c]) for c in range(src.n_sig)])
    finally:
        w.close()
    return path


def _process_written(path: Path, kind: str) -> CanonicalRecord:
    """The one record of a file `_edf_from_ludb` wrote, through a spec of format `kind`: its id,
    sex and age from the file, 12 usable leads at 500 Hz."""
    spec = parse_spec({"name": f"holter-{kind}", "format": kind, "records": f"*.{kind}",
                       "header_comments": True}, f"{kind}.yaml")
    ref, = SpecAdapter(spec).list_records(path.parent)
    assert ref.record_id == "ludb1" and ref.sex == "M" and ref.age == 49
    out = process_record(ref)
    assert isinstance(out, CanonicalRecord), out
    assert out.fs_original == 500.0 and out.digital.shape == (12, 5000) and out.lead_mask.all()
    return out


def test_an_edf_file_reads_with_its_leads_time_sex_and_values(tmp_path):
    import pyedflib

    path = _edf_from_ludb(tmp_path / "edf")
    out = _process_written(path, "edf")
    assert out.ref.ecg_time == "2020-03-04T05:06:07"
    f = pyedflib.EdfReader(str(path))
    try:
        for c, label in enumerate(f.getSignalLabels()):
            # exactly the file's physical values, lead by lead by name
            assert np.allclose(out.millivolts()[lead_index(label)], f.readSignal(c), atol=1e-6)
    finally:
        f.close()
    ludb = wfdb.rdrecord(str(REPO / "data" / "ludb" / "data" / "1"))
    # pyedflib's writer quantises to within one step of the +-10 mV / 16-bit grid (it does not
    # round to the nearest step), so LUDB's values come back within one step
    quantum = 20.0 / 65535
    for c, name in enumerate(ludb.sig_name):
        assert np.abs(out.millivolts()[lead_index(name)] - ludb.p_signal[:, c]).max() \
            <= quantum + 1e-6


def test_a_bdf_file_is_stored_in_16_bits_within_half_a_step_of_its_24_bit_values(tmp_path):
    """BDF's 24-bit samples do not fit int16: each lead is centred and re-quantised to its own
    peak (flagged), so the stored millivolts are within half that step of the file's."""
    import pyedflib

    out = _process_written(_edf_from_ludb(tmp_path / "bdf", kind="bdf"), "bdf")
    f = pyedflib.EdfReader(str(tmp_path / "bdf" / "ludb1.bdf"))
    try:
        for c, label in enumerate(f.getSignalLabels()):
            i = lead_index(label)
            assert "requantised_int16" in out.quality_flags[LEADS[i]]
            step = 1.0 / float(out.gain[i])                # mV per stored unit
            assert np.abs(out.millivolts()[i] - f.readSignal(c)).max() <= step / 2 + 1e-6
            assert step < 1e-3                             # finer than 1 uV on LUDB's amplitudes
    finally:
        f.close()


def test_an_edf_window_reads_only_its_samples(tmp_path):
    path = _edf_from_ludb(tmp_path / "edf")
    spec = parse_spec({"name": "holter-edf", "format": "edf", "records": "*.edf",
                       "header_comments": False,
                       "windows": {"length_s": 4, "hop_s": 3}}, "edf.yaml")
    refs = list(SpecAdapter(spec).list_records(path.parent))
    assert [r.window["start"] for r in refs] == [0, 1500, 3000]
    # 4 s windows are below the 10 s minimum: quarantined too_short, not stored short
    assert {process_record(r).reason for r in refs} == {"too_short"}
    long = parse_spec({"name": "holter-edf", "format": "edf", "records": "*.edf",
                       "header_comments": False, "windows": {"length_s": 10}}, "edf.yaml")
    ref, = SpecAdapter(long).list_records(path.parent)
    whole, = SpecAdapter(parse_spec({"name": "holter-edf", "format": "edf", "records": "*.edf",
                                     "header_comments": False}, "e.yaml")).list_records(path.parent)
    a, b = process_record(ref), process_record(whole)
    assert ref.window["length"] == 5000 and np.array_equal(a.digital, b.digital)
    assert a.source_sha256 == b.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


CODE15_EXAMS = [("1001", "1", "7", 50, True), ("1002", "2", "7", 50, True),
                ("1003", "3", "8", 34, False), ("1004", "4", "9", 77, False)]


def _code15_fixture(folder: Path) -> Path:
    """ARTIFICIAL plumbing, not CODE-15 data: LUDB records 1-4 resampled 500 -> 400 Hz (10 s =
    4000 samples), zero-padded to 4096 (48 each side) as CODE-15 pads, in units of 1e-4 V, in
    one `exams_part0.hdf5`, with an exams.csv that gives them made-up exam ids, patients (two
    exams of patient 7), ages and sexes."""
    import h5py
    from scipy.signal import resample_poly

    folder.mkdir()
    tracings = np.zeros((len(CODE15_EXAMS), 4096, 12), np.float32)
    for n, (_, record, _, _, _) in enumerate(CODE15_EXAMS):
        src = wfdb.rdrecord(str(REPO / "data" / "ludb" / "data" / record))
        for c, name in enumerate(src.sig_name):
            tracings[n, 48:4048, lead_index(name)] = resample_poly(src.p_signal[:, c], 4, 5) * 10
    with h5py.File(folder / "exams_part0.hdf5", "w") as f:
        f["tracings"] = tracings
        f["exam_id"] = np.array([int(e[0]) for e in CODE15_EXAMS])
    rows = ["exam_id,age,is_male,patient_id,trace_file,AF"] + [
        f"{e},{age},{male},{patient},exams_part0.hdf5,False"
        for e, _, patient, age, male in CODE15_EXAMS]
    (folder / "exams.csv").write_text("\n".join(rows) + "\n")
    return folder


CODE15_SPEC = {"name": "code15", "format": "code15-hdf5", "records": "*.hdf5",
               "record_id": "stem", "patient_id": {"column": "patient_id"},
               "header_comments": False,
               "table": {"path": "exams.csv", "key": {"column": "exam_id", "from": "record_id"},
                         "columns": {"age": "age", "sex": "is_male"},
                         "sex_values": {"True": "M", "False": "F"}, "label_columns": ["AF"]}}


def test_the_code15_layout_reads_each_exam_with_its_padding_trimmed(tmp_path):
    import h5py
    from scipy.signal import resample_poly

    folder = _code15_fixture(tmp_path / "code15")
    refs = list(SpecAdapter(parse_spec(CODE15_SPEC, "code15.yaml", folder)).list_records(folder))
    assert [r.record_id for r in refs] == [e[0] for e in CODE15_EXAMS]
    assert [r.patient_id for r in refs] == [f"code15/{e[2]}" for e in CODE15_EXAMS]
    assert [(r.age, r.sex) for r in refs] == [(e[3], "M" if e[4] else "F") for e in CODE15_EXAMS]
    with h5py.File(folder / "exams_part0.hdf5", "r") as f:
        tracings = f["tracings"][()]
    digests = set()
    for n, ref in enumerate(refs):
        out = process_record(ref)
        assert isinstance(out, CanonicalRecord), out
        # 4000 samples at 400 Hz once the padding is gone: 10 s, 5000 at 500 Hz
        assert out.fs_original == 400.0 and out.digital.shape == (12, 5000) and out.lead_mask.all()
        expected = resample_poly(tracings[n, 48:4048].astype(np.float64) / 10, 5, 4, axis=0).T
        assert np.abs(out.millivolts() - expected).max() < 2e-3          # within 2 uV
        digests.add(out.source_sha256)
    assert len(digests) == len(refs)      # each exam its own recording, not the shared file


@pytest.mark.slow
def test_the_code15_fixture_ingests_with_patient_level_splits(ray_local, tmp_path):
    folder = _code15_fixture(tmp_path / "code15")
    spec = parse_spec(CODE15_SPEC, "code15.yaml", folder)
    summary = run_ingest(IngestConfig("code15", folder, str(tmp_path / "ds"),
                                      shard_bytes=1_000_000),
                         list_refs=lambda corpus, source: SpecAdapter(spec).list_records(source))
    assert summary.stored == 4 and summary.quarantined == 0
    m = pq.read_table(tmp_path / "ds" / MANIFEST_KEY).to_pandas().set_index("record_id")
    assert (m["n_samples"] == 5000).all() and (m["fs_original"] == 400.0).all()
    assert m.loc["1001", "split"] == m.loc["1002", "split"]          # both exams of patient 7
    assert json.loads(m.loc["1003", "labels"])["AF"] == "False"
