"""The data card (issue 14, item 4): jobs/ingest.py writes `<dataset>/datacard/` beside the
manifest and names it; its numbers are the manifest's and the quarantine's; the page names
every section and loads in chromium with every image; the example ECGs are the stored signals
in millivolts; a rerender gives the same card; strings from data are escaped.

One ingest of the bundled LUDB records with some signal files lost (so the quarantine section
has counts), run as the job a user runs, shared by the module's checks.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clef_model.leads import LEADS
from clef_platform.layout.datacard import (SECTIONS, DataCardConfig, labels, read_data_card,
                                           records_and_windows, render_html)
from clef_platform.layout.dataset import DatasetError, open_dataset, read_quarantine

REPO = Path(__file__).resolve().parents[1]
LOST = 20          # of LUDB's 200 records: their .dat files deleted


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a private Ray
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("datacard")
    source, dest = root / "ludb-src", root / "ludb"
    shutil.copytree(REPO / "data" / "ludb" / "data", source)
    lost = sorted(source.glob("*.dat"))[:LOST]
    for dat in lost:
        dat.unlink()
    p = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "ingest.py"), "--corpus", "ludb", "--source",
         str(source), "--dest", str(dest), "--workers", "1", "--cpus-per-worker", "0.5",
         "--shard-bytes", "1000000", "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return {"source": source, "dest": dest, "stdout": p.stdout,
            "lost": {d.stem for d in lost}}


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.mark.slow
def test_the_ingest_job_writes_the_card_beside_the_manifest_and_says_where(ingested):
    dest = ingested["dest"]
    lines = [ln.strip() for ln in ingested["stdout"].splitlines()
             if ln.strip().startswith("data card:")]
    assert lines == [f"data card: {dest / 'datacard' / 'index.html'}"], ingested["stdout"]
    assert (dest / "datacard" / "index.html").is_file()
    assert (dest / "datacard" / "card.json").is_file()
    assert (dest / "manifest.parquet").is_file()      # beside it, and the dataset still opens
    assert read_data_card(str(dest))["dataset_digest"] == open_dataset(str(dest)).digest


@pytest.mark.slow
def test_the_card_numbers_are_the_manifest_and_the_quarantine(ingested):
    dest = str(ingested["dest"])
    card = read_data_card(dest)["sections"]
    assert list(card) == list(SECTIONS)
    ds = open_dataset(dest)
    m = ds.frame()
    q = read_quarantine(ds.store).to_pandas()

    rec = card["Records and windows"]
    assert rec["records"] == len(m) == 200 - LOST
    assert rec["by_split"] == m["split"].value_counts().to_dict()
    assert rec["shards"] == len(ds.shards)
    assert rec["windows"] == 0 and rec["whole_records"] == len(m)   # LUDB: no windows

    pat = card["Patients"]
    per_patient = m.groupby("patient_id").size()
    assert pat["patients"] == m["patient_id"].nunique()
    assert sum(pat["records_per_patient"].values()) == pat["patients"]
    assert sum(int(k) * v for k, v in pat["records_per_patient"].items()) == len(m)
    assert pat["records_per_patient_stats"]["max"] == per_patient.max()

    quar = card["Quarantine"]
    assert quar["by_reason"] == q["reason"].value_counts().to_dict() \
        == {"missing_signal_file": LOST}
    assert quar["quarantined"] == len(q) and quar["records_in"] == 200
    assert set(q["record_id"]) == ingested["lost"]

    dur = card["Durations"]
    assert dur["seconds"]["min"] == m["n_samples"].min() / 500
    assert dur["seconds"]["max"] == m["n_samples"].max() / 500
    assert sum(dur["histogram"]["counts"]) == len(m)
    assert card["Sampling rates before resampling"]["fs_original"] == {
        f"{k:g}": v for k, v in m["fs_original"].value_counts().items()}

    masks = np.array(m["lead_mask"].tolist())
    assert card["Leads present"]["usable"] == dict(zip(LEADS, masks.sum(axis=0).tolist()))

    age = card["Age and sex"]
    assert age["age"]["known"] == m["age"].notna().sum()
    assert age["age"]["known"] + age["age"]["unknown"] == len(m)
    assert sum(age["age"]["histogram"]["counts"]) == age["age"]["known"]
    assert age["sex"] == m["sex"].fillna("unknown").replace("", "unknown").value_counts().to_dict()

    # counted here from the manifest's JSON, independently of the card's code
    dx = Counter(d for text in m["labels"] for d in set(json.loads(text).get("diagnoses", [])))
    top = card["Labels"]["keys"]["diagnoses"]
    assert top["records"] == sum("diagnoses" in json.loads(t) for t in m["labels"])
    assert top["distinct"] == len(dx)
    assert top["top"][0] == list(dx.most_common(1)[0])
    assert all(dx[v] == n for v, n in top["top"])


@pytest.mark.slow
def test_the_page_names_every_section_and_loads_every_image_in_chromium(ingested):
    folder = ingested["dest"] / "datacard"
    page = (folder / "index.html").read_text()
    card = read_data_card(str(ingested["dest"]))
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, title
    parser = _Images()
    parser.feed(page)
    figures = [f for s in card["sections"].values() for f in s["figures"]]
    assert sorted(parser.srcs) == sorted(figures)
    assert len(figures) == len(SECTIONS) - 1 + 3         # one per section, 3 example ECGs
    for f in figures:
        assert (folder / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          "--allow-file-access-from-files", "--virtual-time-budget=5000",
                          "--dump-dom", (folder / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert 'data-images-ok="true"' in dom.stdout, dom.stdout[:2000] + dom.stderr[-2000:]


@pytest.mark.slow
def test_the_example_ecgs_are_the_stored_records_in_millivolts(ingested):
    import wfdb

    dest = str(ingested["dest"])
    m = open_dataset(dest).frame()
    examples = read_data_card(dest)["sections"]["Example ECGs"]["examples"]
    first = sorted(m["shard"])[0]
    assert [e["key"] for e in examples] == m[m["shard"] == first]["key"].tolist()[:3]
    for e in examples:
        row = m[m["key"] == e["key"]].iloc[0]
        assert e["sha256"] == row["sha256"] and e["shard"] == row["shard"]
        # the plotted range against wfdb's own physical signal of the source record
        src = wfdb.rdrecord(str(ingested["source"] / row["record_id"]))
        for lead, (lo, hi) in e["mv_range"].items():
            ch = [n.upper() for n in src.sig_name].index(lead.upper())
            sig = src.p_signal[:int(e["seconds_plotted"] * src.fs), ch]
            step = 1 / src.adc_gain[ch]
            assert abs(lo - sig.min()) <= step and abs(hi - sig.max()) <= step, (e["key"], lead)
        assert e["leads_plotted"] == [ld for ld, ok in zip(LEADS, row["lead_mask"]) if ok]


@pytest.mark.slow
def test_rendering_again_gives_the_same_card_and_a_non_dataset_is_one_line(ingested, tmp_path):
    dest = ingested["dest"]
    before = (dest / "datacard" / "card.json").read_bytes()
    (dest / "datacard" / "card.json").unlink()
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "datacard.py"), "--data", str(dest)],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == str(dest / "datacard" / "index.html")
    assert (dest / "datacard" / "card.json").read_bytes() == before

    with pytest.raises(DatasetError, match="no data card"):
        read_data_card(str(tmp_path))
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "datacard.py"), "--data",
                        str(tmp_path)], capture_output=True, text=True, timeout=300, env=_env())
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("datacard: error: ") and "never committed" in p.stderr
    assert not (tmp_path / "datacard").exists()


@pytest.mark.slow
def test_windows_are_the_rows_with_a_parent(ingested):
    m = open_dataset(str(ingested["dest"])).frame()
    m["parent_record_id"] = None
    m.loc[:5, "parent_record_id"] = ["a", "a", "a", "b", "b", ""]   # "" is no parent
    sec = records_and_windows(m, 1).data
    assert (sec["windows"], sec["parent_records"], sec["whole_records"]) == (5, 2, len(m) - 5)
    assert sec["window_columns"] is True
    sec = records_and_windows(m.drop(columns=["parent_record_id"]), 1).data
    assert (sec["windows"], sec["window_columns"], sec["records"]) == (0, False, len(m))


@pytest.mark.slow
def test_a_windowed_corpus_counts_its_windows_and_their_parents(tmp_path):
    """MIT-BIH 100 (30 min at 360 Hz) stored as 10 s windows by corpora/mitdb.yaml."""
    dest = tmp_path / "mitdb"
    p = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "ingest.py"), "--corpus", "mitdb", "--source",
         str(REPO / "data" / "mitdb-100"), "--dest", str(dest), "--workers", "1",
         "--cpus-per-worker", "0.5", "--shard-bytes", "4000000", "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert f"data card: {dest / 'datacard' / 'index.html'}" in p.stdout
    m = open_dataset(str(dest)).frame()
    card = read_data_card(str(dest))["sections"]
    rec = card["Records and windows"]
    windows = m["parent_record_id"].notna()
    assert windows.all() and len(m) > 100                  # every row a window of record 100
    assert (rec["records"], rec["windows"], rec["whole_records"]) == (len(m), len(m), 0)
    assert rec["parent_records"] == m["parent_record_id"].nunique() == 1
    assert card["Patients"]["records_per_patient"] == {str(len(m)): 1}
    assert card["Sampling rates before resampling"]["fs_original"] == {"360": len(m)}
    usable = dict(zip(LEADS, np.array(m["lead_mask"].tolist()).sum(axis=0).tolist()))
    assert card["Leads present"]["usable"] == usable
    assert {ld for ld, n in usable.items() if n} == {"II", "V5"}       # MLII read as II
    for e in card["Example ECGs"]["examples"]:
        assert e["leads_plotted"] == ["II", "V5"] and e["seconds_plotted"] == 10
    assert card["Age and sex"]["age"]["unknown"] == m["age"].isna().sum()


def test_strings_from_data_are_escaped_on_the_page():
    hostile = '<img src=x onerror="alert(1)">'
    frame = pd.DataFrame({"labels": [json.dumps({"dx": [hostile], hostile: 1}), "{}"]})
    sec = labels(frame, DataCardConfig())
    assert sec.data["keys"]["dx"]["top"] == [[hostile, 1]]
    card = {"dataset": "<b>ds</b>", "dataset_digest": "0" * 64, "corpora": ["<i>c</i>"],
            "sections": {t: {"facts": [], "figures": []} for t in SECTIONS}}
    card["sections"]["Labels"] = sec.to_json()
    page = render_html(card)
    assert hostile not in page and "<b>ds</b>" not in page and "<i>c</i>" not in page
    assert html.escape(hostile) in page
    parser = _Images()
    parser.feed(page)
    assert parser.srcs == ["labels.png"]      # the only <img>: the section's own figure


def test_a_card_that_cannot_be_written_fails_the_job_saying_the_dataset_is_committed(tmp_path):
    from clef_platform import cli
    from tests.helpers import load_job

    with pytest.raises(cli.Failure) as err:
        load_job("ingest").data_card(str(tmp_path))    # no committed dataset there
    line = str(err.value)
    assert line.startswith(f"dataset {tmp_path} is committed, but its data card was not "
                           "written (DatasetError: ")
    assert line.endswith(f"render it with jobs/datacard.py --data {tmp_path}")
