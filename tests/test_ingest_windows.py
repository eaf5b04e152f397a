"""Long recordings cut into windows (issue 14): MIT-BIH record 100 (data/mitdb-100, ODC-By 1.0;
30 min 6 s at 360 Hz, MLII and V5) through the project's corpora/mitdb.yaml, which stores it
as 10 s windows with MLII read as lead II."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import wfdb

from clef_model.leads import lead_index
from clef_platform.ingest.pipeline import IngestConfig, run_ingest
from clef_platform.ingest.spec import SpecAdapter, load_spec, parse_spec
from clef_platform.ingest.splits import SplitRatios
from clef_platform.ingest.windows import WindowPolicy, plan
from clef_platform.layout.dataset import MANIFEST_KEY
from clef_platform.loader import LoaderConfig, record_dataset
from tests.helpers import REPO

MITDB = REPO / "data" / "mitdb-100"
N_WINDOWS = 650000 // 3600      # 180 whole 10 s windows; the last 5.6 s are dropped


def test_window_plans():
    p = WindowPolicy(length_s=10, hop_s=5)
    assert plan(p, 25 * 100, 100.0) == [(0, 1000), (500, 1000), (1000, 1000), (1500, 1000)]
    end = WindowPolicy(length_s=10, hop_s=10, remainder="end")
    assert plan(end, 2500, 100.0) == [(0, 1000), (1000, 1000), (1500, 1000)]
    assert plan(WindowPolicy(10, 10, start_s=2, max_windows=1), 2500, 100.0) == [(200, 1000)]
    # shorter than one window: one window past the end, which reading quarantines as too short
    assert plan(WindowPolicy(10, 10), 900, 100.0) == [(0, 1000)]


@pytest.fixture(scope="module")
def mitdb_ds(ray_local, tmp_path_factory):
    dest = tmp_path_factory.mktemp("mitdb") / "ds"
    # every window in the train split: one patient, and the leakage test pretrains on them
    summary = run_ingest(IngestConfig("mitdb", MITDB, str(dest), shard_bytes=1_000_000,
                                      split_ratios=SplitRatios((("train", 1.0),)),
                                      workers=2, cpus_per_worker=0.5))
    return dest, summary


@pytest.mark.slow
def test_mitdb_100_is_stored_as_10_s_windows_of_one_parent(mitdb_ds):
    dest, summary = mitdb_ds
    m = pq.read_table(dest / MANIFEST_KEY).to_pandas().sort_values("window_index")
    assert summary.stored == N_WINDOWS and summary.quarantined == 0
    assert m["window_index"].tolist() == list(range(N_WINDOWS))
    assert m["window_start_s"].tolist() == [10.0 * i for i in range(N_WINDOWS)]
    assert set(m["parent_record_id"]) == {"100"} and set(m["patient_id"]) == {"mitdb/100"}
    assert m["split"].nunique() == 1                     # patient-level: one patient, one split
    parent = hashlib.sha256((MITDB / "100.dat").read_bytes()).hexdigest()
    assert set(m["source_sha256"]) == {parent}
    assert (m["n_samples"] == 5000).all() and (m["fs_original"] == 360.0).all()
    usable = [i in (lead_index("II"), lead_index("V5")) for i in range(12)]
    assert all(list(mask) == usable for mask in m["lead_mask"])
    flags = json.loads(m["quality_flags"].iloc[0])["record"]
    assert "lead_alias:MLII->II" in flags and "resampled_from_360Hz" in flags


@pytest.mark.slow
def test_window_values_round_trip(mitdb_ds):
    """Stored windows read back through the loader equal wfdb's physical read of the same source
    samples resampled 360 -> 500 Hz (25/18, polyphase), within half a quantum."""
    from scipy.signal import resample_poly

    dest, _ = mitdb_ds
    split = pq.read_table(dest / MANIFEST_KEY).column("split")[0].as_py()
    checked = set()
    for rec in record_dataset(LoaderConfig(str(dest), split, mode="exact", rank=0, world_size=1)):
        w = rec["meta"]["window"]
        if w["index"] not in (0, 1, 90, N_WINDOWS - 1):
            continue
        start = round(w["start_s"] * 360)
        src = wfdb.rdrecord(str(MITDB / "100"), sampfrom=start, sampto=start + 3600)
        for c, name in enumerate(src.sig_name):          # MLII, V5
            i = lead_index({"MLII": "II"}.get(name, name))
            err = np.abs(rec["signal"][i] - resample_poly(src.p_signal[:, c], 25, 18)).max()
            assert err <= 0.5 / src.adc_gain[c] + 1e-4, (w["index"], name, err)
        checked.add(w["index"])
    assert checked == {0, 1, 90, N_WINDOWS - 1}


MEASURE = """
import json, resource, sys
from pathlib import Path
from clef_platform.ingest.pipeline import ref_to_json, write_shard
from clef_platform.ingest.spec import SpecAdapter, load_spec, parse_spec
from clef_platform.ingest.splits import SplitRatios

adapter = SpecAdapter(load_spec(sys.argv[1]))
short = list(adapter.list_records(Path(sys.argv[2])))
write_shard("train-000000", "train", json.dumps([ref_to_json(r) for r in short[-20:]]), sys.argv[4])
warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
long = list(adapter.list_records(Path(sys.argv[3])))
write_shard("train-000001", "train", json.dumps([ref_to_json(r) for r in long[-40:]]), sys.argv[4])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"short": len(short), "long": len(long), "warm_kib": warm, "peak_kib": peak}))
"""


@pytest.mark.slow
def test_worker_memory_stays_bounded_on_hours_of_recording(tmp_path):
    """Record 100 concatenated 8 times (4 h 1 min; ARTIFICIAL: one real record repeated, to
    make it long). The ingest worker's shard function, run in a fresh process, writes the last
    windows of the 30 min record, then the last windows of the 4 h one: its peak memory grows
    by far less than one decoded copy of the long record would take."""
    rec = wfdb.rdrecord(str(MITDB / "100"), physical=False)
    long_dir = tmp_path / "long"
    long_dir.mkdir()
    wfdb.wrsamp("100x8", fs=360, units=rec.units, sig_name=rec.sig_name,
                d_signal=np.tile(rec.d_signal, (8, 1)), fmt=rec.fmt, adc_gain=rec.adc_gain,
                baseline=rec.baseline, write_dir=str(long_dir))
    p = subprocess.run([sys.executable, "-c", MEASURE, str(REPO / "corpora" / "mitdb.yaml"),
                        str(MITDB), str(long_dir), str(tmp_path / "ds")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["short"] == N_WINDOWS and got["long"] == 8 * 650000 // 3600
    # the long record decoded whole: 5.2 M frames x 2 channels as int64 (wfdb's digital read)
    whole_mib = 8 * 650000 * 2 * 8 / 2**20
    grew_mib = (got["peak_kib"] - got["warm_kib"]) / 1024
    print(f"peak RSS grew {grew_mib:.1f} MiB over the 4 h record's windows "
          f"(whole record decoded: {whole_mib:.0f} MiB)")
    assert grew_mib < whole_mib / 4, got


def test_a_record_too_short_for_one_window_is_quarantined(tmp_path):
    """A 20 s window policy over record 100's first 15 s (cut with wfdb): quarantined too_short
    naming the window, not dropped from the counts."""
    from clef_platform.ingest.canonical import process_record
    from clef_platform.ingest.record import Quarantined

    rec = wfdb.rdrecord(str(MITDB / "100"), physical=False, sampto=15 * 360)
    wfdb.wrsamp("short", fs=360, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(tmp_path))
    spec = parse_spec({"name": "holter", "format": "wfdb", "records": "*.hea",
                       "header_comments": False, "lead_aliases": {"MLII": "II"},
                       "windows": {"length_s": 20}}, "holter.yaml")
    refs = list(SpecAdapter(spec).list_records(tmp_path))
    assert [r.record_id for r in refs] == ["short_w000000"]
    out = process_record(refs[0])
    assert isinstance(out, Quarantined) and out.reason == "too_short"
    assert "window 0 needs samples 0..7200" in out.detail, out.detail


def test_the_project_spec_plans_windows_from_the_header_alone():
    refs = list(SpecAdapter(load_spec(REPO / "corpora" / "mitdb.yaml")).list_records(MITDB))
    assert len(refs) == N_WINDOWS
    assert [r.window["start"] for r in refs[:3]] == [0, 3600, 7200]
    assert refs[0].lead_aliases == {"MLII": "II"} and refs[0].patient_id == "mitdb/100"
    assert {r.window["parent_sha256"] for r in refs} == {
        hashlib.sha256((MITDB / "100.dat").read_bytes()).hexdigest()}
    assert Path(refs[0].source_path).name == "100"


@pytest.mark.slow
def test_pretraining_on_the_windows_excludes_the_whole_record(mitdb_ds, ludb_train_data,
                                                              tmp_path):
    """A short pretraining on the windows of record 100; a dataset holding record 100 whole
    (the same files, ingested by a spec without windows) has it excluded for leakage through
    the export's lineage, by the source files' digest; LUDB loses nothing."""
    from clef_platform.evaluate.embed import excluded_keys
    from clef_platform.evaluate.leakage import run_exclusion
    from clef_platform.layout.dataset import open_dataset
    from clef_platform.layout.export import list_exports, read_marker, run_url
    from clef_platform.train.config import PretrainConfig
    from clef_platform.train.run import run_pretraining

    windows, _ = mitdb_ds
    cfg = PretrainConfig.from_args([
        "--scale", "small", "--method", "simclr", "--data", str(windows), "--storage",
        str(tmp_path / "runs"), "--run-name", "holter", "--workers", "1", "--cpus-per-worker",
        "1", "--batch-per-worker", "8", "--data.loader_workers", "0", "--steps", "2",
        "--checkpoint-every", "2"])
    res = run_pretraining(cfg)
    assert res.error is None, res.error
    url = list_exports(run_url(str(tmp_path / "runs"), "holter"))[2]
    exclusion = run_exclusion({url: read_marker(url)}).exclusion

    spec = parse_spec({"name": "mitdb-whole", "format": "wfdb", "records": "*.hea",
                       "header_comments": False, "lead_aliases": {"MLII": "II"}}, "whole.yaml")
    whole = tmp_path / "whole"
    run_ingest(IngestConfig("mitdb-whole", MITDB, str(whole), shard_bytes=1_000_000),
               list_refs=lambda corpus, source: SpecAdapter(spec).list_records(Path(source)))
    ds = open_dataset(str(whole))
    row = ds.frame().iloc[0]
    assert len(ds.frame()) == 1 and row["n_samples"] == round(650000 * 500 / 360)
    assert row["sha256"] not in exclusion.hashes          # not the same stored signal...
    assert excluded_keys(ds, exclusion.hashes) == {row["key"]}   # ...but the same recording
    assert excluded_keys(open_dataset(ludb_train_data["data"]), exclusion.hashes) == set()
