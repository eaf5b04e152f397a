"""The fine-tune protocol (`jobs/evaluate.py --protocol fine-tune`): CLEF-small and a linear head
trained on the bundled LUDB rhythm task through Ray Train (2 CPU workers, DDP), stopped early on
the validation loss, stored beside the linear probe of the same export under its own key, and
not scored twice."""

from __future__ import annotations

import json

import pytest

from clef_platform import cli
from clef_platform.evaluate.finetune import FineTuneConfig
from clef_platform.evaluate.passes import EvalConfig, config_hash
from clef_platform.evaluate.tasks import load_tasks, with_lead
from clef_platform.layout.results import ResultsStore, results_url
from tests.fixtures import BUNDLED, ingest, write_export
from tests.helpers import load_job


@pytest.mark.parametrize("flag, value, says", [
    ("--finetune.lr", "0", "--finetune.lr must be > 0, got 0.0"),
    ("--finetune.patience", "0", "--finetune.patience must be >= 1, got 0"),
    ("--finetune.epochs", "0", "--finetune.epochs must be >= 1, got 0"),
    ("--finetune.max_lr", "1e-4", "--finetune.max_lr must be >= --finetune.lr, got 0.0001"),
    ("--finetune.batch_size", "3", "--finetune.batch_size must be >= 2 per worker (4 for 2)"),
])
def test_bad_options_are_one_line_errors_before_ray(flag, value, says, tmp_path, capsys):
    argv = ["--run", str(tmp_path / "run"), "--protocol", "fine-tune", "--workers", "2",
            flag, value]
    assert cli.main("evaluate", load_job("evaluate").main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err


def test_key_distinguishes_protocol_and_lead(tmp_path):
    (task,) = load_tasks(["ludb_rhythm"])
    probe = EvalConfig(run_url=str(tmp_path), tasks=[task], data_root=str(tmp_path))
    tune = EvalConfig(run_url=str(tmp_path), tasks=[task], data_root=str(tmp_path),
                      protocol="fine-tune")
    (on_ii,) = with_lead([task], "II")
    hashes = {config_hash(probe, task), config_hash(tune, task), config_hash(probe, on_ii),
              config_hash(tune, on_ii)}
    assert len(hashes) == 4
    # Resources are not part of what is computed: the same key on 1 or 8 workers.
    wide = EvalConfig(run_url=str(tmp_path), tasks=[task], data_root=str(tmp_path),
                      protocol="fine-tune", finetune=FineTuneConfig(workers=8))
    assert config_hash(wide, task) == config_hash(tune, task)
    with pytest.raises(ValueError, match="--protocol 'sgd'"):
        EvalConfig(run_url=str(tmp_path), tasks=[task], data_root=str(tmp_path),
                   protocol="sgd")


@pytest.fixture(scope="module")
def ludb_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    ingest("ludb", BUNDLED["ludb"], str(root / "data" / "ludb"))
    export = write_export(str(root / "runs" / "ft"), 1, seed=0)
    return {"root": root, "run": str(root / "runs" / "ft"), "export": export}


@pytest.mark.slow
def test_finetune_stops_early_and_stores_beside_the_probe(ludb_run, capsys):
    job = load_job("evaluate")
    epochs, patience, delta = 10, 2, 0.01
    common = ["--run", ludb_run["run"], "--data-root", str(ludb_run["root"] / "data"),
              "--tasks", "ludb_rhythm", "--no-random-baseline", "--allow-no-lineage",
              "--n-bootstrap", "200", "--retries", "0"]
    tune = [*common, "--protocol", "fine-tune", "--workers", "2", "--finetune.epochs",
            str(epochs), "--finetune.patience", str(patience), "--finetune.min_delta",
            str(delta), "--finetune.batch_size", "16", "--finetune.folds", "1"]
    assert job.main(tune) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["added"] == 1 and not s["failed"], s
    assert job.main(common) == 0                      # the linear probe of the same export
    assert json.loads(capsys.readouterr().out)["added"] == 1
    assert job.main(tune) == 0                        # a second fine-tune pass adds nothing
    s = json.loads(capsys.readouterr().out)
    assert s["added"] == 0 and s["already_stored"] == 1, s

    df = ResultsStore(results_url(ludb_run["run"])).read()
    assert sorted(df["protocol"]) == ["fine-tune", "linear-probe"]
    assert df["key"].nunique() == 2 and set(df["lead"]) == {"I"}
    assert df["export_digest"].nunique() == 1 and set(df["task"]) == {"ludb_rhythm"}
    row = df[df["protocol"] == "fine-tune"].iloc[0]
    assert row["status"] == "ok" and 0 <= row["lower"] <= row["value"] <= row["upper"] <= 1
    detail = json.loads(row["detail"])
    assert detail["workers"] == 2 and detail["device"] == "cpu"
    assert detail["precision"] == "fp32"
    (fold,) = detail["folds"]
    losses = [h["val_loss"] for h in fold["history"]]
    # Stopped early: fewer epochs than allowed, and the last `patience` epochs did not improve
    # on the best before them by more than min_delta (while every earlier epoch kept going).
    assert fold["stopped_early"] and fold["stop_epoch"] == len(losses) < epochs, fold
    best_before = min(losses[:-patience])
    assert all(v >= best_before - delta for v in losses[-patience:]), losses
    assert len(losses) > patience
    # The test part is the first outer fold of the probes' patient-level 5-fold split.
    assert row["n_test"] == fold["n_test"] and fold["n_train"] + fold["n_val"] + \
        fold["n_test"] == row["n_records"]
    assert fold["n_test"] < row["n_records"] / 3
    # The report shows each figure's protocol and lead.
    html = (ludb_run["root"] / "runs" / "ft" / "eval" / "report" / "index.html").read_text()
    assert "fine-tune, lead I" in html and "linear-probe, lead I" in html
