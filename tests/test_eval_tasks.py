"""Evaluation tasks as data: the shipped YAML files load and give the expected labels on the
bundled real records (headers read by the ingestion adapters; no signals, no Ray)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from clef_platform.evaluate.tasks import (MIN_POSITIVES, TaskError, compute_labels, load_tasks,
                                          task_from_dict)
from clef_platform.ingest.adapters import get_adapter

DATA = Path(__file__).resolve().parents[1] / "data"


def records(corpus: str, source: Path) -> list[dict]:
    """Label-bearing record dicts as the loader/shards give them (meta: age, sex, labels)."""
    out = []
    for ref in get_adapter(corpus).list_records(source):
        out.append({"key": f"{corpus}__{ref.record_id}", "record_id": ref.record_id,
                    "patient_id": ref.patient_id,
                    "meta": {"age": ref.age, "sex": ref.sex, "labels": ref.labels}})
    return out


def test_every_shipped_task_loads():
    tasks = {t.name: t for t in load_tasks()}
    assert {"ludb_rhythm", "ludb_sex", "ludb_age", "cinc2021_dx", "ptbxl_diagnostic",
            "ptbxl_subdiagnostic", "ptbxl_superdiagnostic", "ptbxl_form",
            "ptbxl_rhythm"} <= set(tasks)
    assert all(t.lead == "I" and t.window == 5000 for t in tasks.values())
    assert tasks["ptbxl_form"].scheme.kind == "folds"
    assert tasks["ptbxl_form"].scheme.test == ("10",)
    assert tasks["ludb_rhythm"].scheme.kind == "kfold"


def test_ludb_labels_match_the_database_table():
    recs = records("ludb", DATA / "ludb" / "data")
    tasks = {t.name: t for t in load_tasks(["ludb_rhythm", "ludb_sex", "ludb_age"])}
    rhythm = compute_labels(tasks["ludb_rhythm"], recs)
    assert rhythm.has_label.all()
    assert rhythm.counts == {"Sinus rhythm": 143, "negatives": 57}     # ludb.csv: 143 / 57
    sex = compute_labels(tasks["ludb_sex"], recs)
    assert sex.has_label.sum() == 200 and sex.classes == ["M"]
    age = compute_labels(tasks["ludb_age"], recs)
    assert age.has_label.sum() >= 195 and 10 < np.nanmean(age.y) < 90


def test_cinc_multilabel_keeps_only_codes_reaching_the_minimum():
    recs = records("cinc2021", DATA / "cinc2021-sample")
    (task,) = load_tasks(["cinc2021_dx"])
    lab = compute_labels(task, recs)
    assert lab.classes == ["164934002", "284470004", "426783006", "427084000"]
    assert lab.y.shape == (50, 4) and lab.y.sum(0).tolist() == [10, 20, 15, 23]
    # 698252002 has 9 positives: skipped and reported, never averaged in.
    assert "698252002" in lab.skipped and "9 positives" in lab.skipped["698252002"]
    assert all(lab.counts[c] < MIN_POSITIVES for c in lab.skipped)


def test_ptbxl_groupings_map_scp_codes_through_scp_statements():
    recs = records("ptb-xl", DATA / "ptbxl-sample")
    by = {t.name: compute_labels(t, recs) for t in load_tasks(
        ["ptbxl_superdiagnostic", "ptbxl_subdiagnostic", "ptbxl_diagnostic", "ptbxl_form",
         "ptbxl_rhythm"])}
    # 11 records cannot reach the minimum: every class is skipped, none probed.
    assert all(not lab.classes for lab in by.values())
    sup = by["ptbxl_superdiagnostic"].counts
    # Cross-check against the adapter's own diagnostic_superclass labels.
    expect: dict[str, int] = {}
    for r in recs:
        for c in set(r["meta"]["labels"].get("diagnostic_superclass", [])):
            expect[c] = expect.get(c, 0) + 1
    assert sup == expect
    assert by["ptbxl_rhythm"].counts.get("SR", 0) >= 1          # SR is a rhythm statement
    assert "NORM" in by["ptbxl_diagnostic"].counts and "NORM" not in by["ptbxl_rhythm"].counts
    folds = [r["meta"]["labels"]["strat_fold"] for r in recs]
    assert 10 in folds


def test_malformed_tasks_are_refused():
    (t,) = load_tasks(["ludb_sex"])
    good = {"name": "x", "dataset": "ludb", "label": {"kind": "binary", "field": "sex",
                                                      "positive": ["M"]},
            "scheme": {"kind": "kfold"}}
    task_from_dict(good)
    with pytest.raises(TaskError, match="minimum"):
        task_from_dict({**good, "min_positives": 3})
    with pytest.raises(TaskError, match="unknown key"):
        task_from_dict({**good, "lable": {}})
    with pytest.raises(TaskError, match="lead"):
        task_from_dict({**good, "lead": "XII"})
    with pytest.raises(TaskError, match="overlap"):
        task_from_dict({**good, "scheme": {"kind": "folds", "field": "f", "train": [1, 2],
                                           "val": [2], "test": [3]}})
    # the probe config hash changes with the task definition
    from clef_platform.evaluate.probes import ProbeConfig

    other = dataclasses.replace(t, label=dataclasses.replace(t.label, positive=("F",)))
    assert ProbeConfig().hash(t, "v") != ProbeConfig().hash(other, "v")


def test_lead_option_moves_every_task_and_changes_its_key():
    """`jobs/evaluate.py --lead II` (the release's code) scores every task on lead II: the lead
    is in the task fingerprint, so its results get their own keys; a bad lead is one line."""
    import subprocess
    import sys

    from clef_platform.evaluate.passes import EvalConfig, config_hash
    from clef_platform.evaluate.tasks import with_lead

    tasks = load_tasks()
    moved = with_lead(tasks, "II")
    assert {t.lead for t in tasks} == {"I"} and {t.lead for t in moved} == {"II"}
    assert all(t.lead_index == 1 for t in moved)
    cfg = EvalConfig(run_url="unused", tasks=tasks, data_root="unused")
    assert all(config_hash(cfg, a) != config_hash(cfg, b) for a, b in zip(tasks, moved))
    assert with_lead(tasks, None) == tasks
    with pytest.raises(TaskError, match="--lead 'X2'"):
        with_lead(tasks, "X2")
    r = subprocess.run([sys.executable, "jobs/evaluate.py", "--run", "unused", "--lead", "X2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("evaluate: error: --lead 'X2'")
