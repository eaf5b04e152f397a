"""End to end: a run trained by jobs/pretrain.py on LUDB, then jobs/evaluate.py with NO
--pretrain-manifest: the records of the run's training split, named by its export marker's
lineage (layout.export.TrainingData), are excluded exactly; locally and on S3 (moto).

Passes once training writes `ExportMarker`s with `training_data` through
`layout.export.write_export`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clef_platform.evaluate.discovery import discover_exports
from clef_platform.evaluate.leakage import run_exclusion
from clef_platform.layout.dataset import open_dataset
from clef_platform.layout.export import list_exports, read_marker
from clef_platform.layout.results import ResultsStore, results_url
from clef_platform.storage import open_store
from tests.helpers import load_job

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_trained_run_excludes_exactly_its_training_split(where, ludb_train_data, tmp_path,
                                                         request, capsys):
    data = ludb_train_data["data"]
    if where == "s3":
        import boto3

        request.getfixturevalue("moto_s3")
        boto3.client("s3").create_bucket(Bucket="eval-e2e")
        dest = open_store("s3://eval-e2e/data/ludb")
        for p in sorted(Path(data).rglob("*")):
            if p.is_file():
                dest.put_file(p.relative_to(data).as_posix(), p)
        data, storage = "s3://eval-e2e/data/ludb", "s3://eval-e2e/runs"
    else:
        storage = str(tmp_path / "runs")
    proc = subprocess.run(
        [sys.executable, "jobs/pretrain.py", "--address", "local", "--scale", "small",
         "--method", "clef", "--data", data, "--features", ludb_train_data["features"],
         "--storage", storage, "--run-name", "e2e", "--workers", "1",
         "--batch-per-worker", "4", "--steps", "2", "--checkpoint-every", "2",
         "--cpus-per-worker", "1", "--data.loader_workers", "1", "--zero-stage", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run = f"{storage}/e2e"
    exports = list_exports(run)
    assert list(exports) == [2]

    # The lineage training wrote: the train split of exactly this dataset.
    ds = open_dataset(data)
    train = ds.frame("train")
    marker = read_marker(exports[2])
    assert [(open_dataset(t.url).url, t.split, t.dataset_digest, t.records)
            for t in marker.training_data] == [(ds.url, "train", ds.digest, len(train))]
    ex = run_exclusion(discover_exports(run).markers).exclusion
    assert ex.hashes == frozenset(train["sha256"]) | frozenset(train["source_sha256"])

    data_root = data.rsplit("/", 1)[0]
    argv = ["--run", run, "--data-root", data_root, "--tasks", "ludb_sex",
            "--no-random-baseline", "--n-bootstrap", "200", "--retries", "0"]
    assert load_job("evaluate").main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["added"] == 1 and not summary["failed"] and not summary["no_lineage"]
    (row,) = ResultsStore(results_url(run)).read().to_dict("records")
    assert row["export_digest"] == marker.digest and row["dataset_digest"] == ds.digest
    assert row["lineage"] == "checked"
    # Every LUDB record has a sex label: the probe scored exactly the records outside train.
    assert row["n_excluded_leakage"] == len(train)
    assert row["n_records"] == row["n_test"] == ds.records() - len(train)
    assert any(ds.url in s for s in json.loads(row["detail"])["leakage_sources"])
