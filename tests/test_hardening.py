"""Every job x every kind of bad option, file and table: the exit status the CLI contract gives
(clef_platform/cli.py: 2 = user error, 1 = operational), one line on stderr that names the
culprit, and never a traceback. The jobs run as users run them (`python jobs/<job>.py`); all
but one case fail before Ray starts, so the table takes about a minute or two.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
HOSP = REPO / "data" / "mimic-iv-demo" / "hosp"
LUDB = REPO / "data" / "ludb"


@dataclass(frozen=True)
class Case:
    id: str
    job: str
    args: tuple[str, ...]          # "{tmp}" is the test's temp folder
    culprit: str                   # must appear in the error line
    status: int = 2
    before_ray: bool = True        # nothing else on stderr (no log lines: nothing started)


def _yaml(name: str, text: str) -> tuple[str, str]:
    return ("--config", f"{{tmp}}/{name}.yaml")


PRETRAIN = ("--data", "{tmp}/no-dataset", "--features", "{tmp}/no-features")
CASES = [
    # pretrain: strict YAML types, unknown keys, ranges, files
    Case("pretrain-yaml-float-for-int", "pretrain", (*PRETRAIN, *_yaml("steps_float", "")),
         "'steps'"),
    Case("pretrain-yaml-bool-for-int", "pretrain", (*PRETRAIN, *_yaml("batch_bool", "")),
         "'batch_per_worker'"),
    Case("pretrain-yaml-word-for-int", "pretrain", (*PRETRAIN, *_yaml("steps_word", "")),
         "'steps'"),
    Case("pretrain-yaml-unknown-key", "pretrain", (*PRETRAIN, *_yaml("unknown", "")),
         "'optim.learning_rate'"),
    Case("pretrain-yaml-bad-choice", "pretrain", (*PRETRAIN, *_yaml("choice", "")),
         "'data.views_on'"),
    Case("pretrain-yaml-syntax", "pretrain", (*PRETRAIN, *_yaml("syntax", "")), "syntax.yaml"),
    Case("pretrain-config-missing", "pretrain", (*PRETRAIN, "--config", "{tmp}/absent.yaml"),
         "absent.yaml"),
    Case("pretrain-lr-negative", "pretrain", (*PRETRAIN, "--lr", "-1"), "optim.lr"),
    Case("pretrain-lr-nan", "pretrain", (*PRETRAIN, "--lr", "nan"), "optim.lr"),
    Case("pretrain-temperature-zero", "pretrain", (*PRETRAIN, "--temperature", "0"),
         "temperature"),
    Case("pretrain-view-length-short", "pretrain", (*PRETRAIN, "--data.view_length", "10"),
         "data.view_length"),
    Case("pretrain-steps-float", "pretrain", (*PRETRAIN, "--steps", "3.7"), "--steps"),
    Case("pretrain-steps-zero", "pretrain", (*PRETRAIN, "--steps", "0"), "steps"),
    Case("pretrain-max-failures-negative", "pretrain", (*PRETRAIN, "--max-failures", "-1"),
         "max_failures"),
    Case("pretrain-loader-workers-negative", "pretrain",
         (*PRETRAIN, "--data.loader_workers", "-1"), "data.loader_workers"),
    Case("pretrain-missing-dataset", "pretrain", PRETRAIN, "no-dataset"),
    Case("pretrain-unknown-scale", "pretrain", (*PRETRAIN, "--scale", "huge"), "--scale"),
    # pretrain_local
    Case("pretrain_local-lr-nan", "pretrain_local", ("--lr", "nan"), "--lr"),
    Case("pretrain_local-unknown-corpus", "pretrain_local",
         ("--corpus", "nope", "--source", str(LUDB)), "'nope'"),
    Case("pretrain_local-missing-source", "pretrain_local", ("--source", "{tmp}/absent"),
         "--source"),
    # ingest
    Case("ingest-unknown-corpus", "ingest",
         ("--corpus", "nope", "--source", str(LUDB), "--dest", "{tmp}/ds"), "'nope'"),
    Case("ingest-missing-source", "ingest",
         ("--corpus", "ludb", "--source", "{tmp}/absent", "--dest", "{tmp}/ds"), "--source"),
    Case("ingest-workers-zero", "ingest",
         ("--corpus", "ludb", "--source", str(LUDB), "--dest", "{tmp}/ds", "--workers", "0"),
         "--workers"),
    Case("ingest-shard-bytes-tiny", "ingest",
         ("--corpus", "ludb", "--source", str(LUDB), "--dest", "{tmp}/ds", "--shard-bytes",
          "12"), "--shard-bytes"),
    Case("ingest-empty-source", "ingest",
         ("--corpus", "ludb", "--source", "{tmp}/empty", "--dest", "{tmp}/ds",
          "--no-progress"), "--source", before_ray=False),
    # build_features: tables and options
    Case("features-missing-column", "build_features",
         ("--repo", "{tmp}/repo", "--mimic-hosp", "{tmp}/hosp_nogender", "--no-materialise"),
         "missing column(s) gender"),
    Case("features-empty-gzip", "build_features",
         ("--repo", "{tmp}/repo", "--mimic-hosp", "{tmp}/hosp_empty", "--no-materialise"),
         "hosp_empty/patients.csv.gz"),
    Case("features-corrupt-gzip", "build_features",
         ("--repo", "{tmp}/repo", "--mimic-hosp", "{tmp}/hosp_cut", "--no-materialise"),
         "hosp_cut/patients.csv.gz"),
    Case("features-missing-table", "build_features",
         ("--repo", "{tmp}/repo", "--mimic-hosp", "{tmp}/hosp_noomr", "--no-materialise"),
         "omr.csv"),
    Case("features-missing-hosp", "build_features",
         ("--repo", "{tmp}/repo", "--mimic-hosp", "{tmp}/absent"), "--mimic-hosp"),
    Case("features-min-coverage-range", "build_features",
         ("--repo", "{tmp}/repo", "--mimic-hosp", str(HOSP), "--min-coverage", "2"),
         "--min-coverage"),
    Case("features-missing-manifest", "build_features",
         ("--repo", "{tmp}/repo", "--manifest", "{tmp}/no-dataset"), "no-dataset"),
    Case("features-unwritable-repo", "build_features",
         ("--repo", "/proc/clef-no-repo", "--mimic-hosp", str(HOSP), "--no-materialise"),
         "/proc/clef-no-repo", status=1, before_ray=False),
    # evaluate
    Case("evaluate-n-bootstrap-zero", "evaluate", ("--run", "{tmp}/run", "--n-bootstrap", "0"),
         "--n-bootstrap"),
    Case("evaluate-max-passes-negative", "evaluate",
         ("--run", "{tmp}/run", "--max-passes", "-3"), "--max-passes"),
    Case("evaluate-retries-negative", "evaluate", ("--run", "{tmp}/run", "--retries", "-1"),
         "--retries"),
    Case("evaluate-interval-zero", "evaluate", ("--run", "{tmp}/run", "--interval", "0"),
         "--interval"),
    Case("evaluate-unknown-task", "evaluate", ("--run", "{tmp}/run", "--tasks", "no_such_task"),
         "no_such_task"),
    Case("evaluate-metrics-port", "evaluate", ("--run", "{tmp}/run", "--metrics-port", "70000"),
         "--metrics-port"),
    # make_demo_corpus, demo
    Case("demo_corpus-holdout-negative", "make_demo_corpus",
         ("--ludb", str(LUDB), "--mimic-hosp", str(HOSP), "--out", "{tmp}/c", "--holdout", "-1"),
         "--holdout"),
    Case("demo_corpus-missing-ludb", "make_demo_corpus",
         ("--ludb", "{tmp}/absent", "--mimic-hosp", str(HOSP), "--out", "{tmp}/c"), "--ludb"),
    Case("demo-steps-zero", "demo", ("--out", "{tmp}/demo", "--steps", "0"), "--steps"),
    Case("demo-foreign-out", "demo", ("--out", "{tmp}/foreign"), "foreign"),
]

YAML = {
    "steps_float": "steps: 3.7\n",
    "batch_bool": "batch_per_worker: true\n",
    "steps_word": 'steps: "three"\n',
    "unknown": "optim: {learning_rate: 1}\n",
    "choice": "data: {views_on: gpu}\n",
    "syntax": "steps: [1, 2\n",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Bad inputs made from the shipped MIMIC-IV demo tables (data/mimic-iv-demo, ODbL)."""
    tmp = tmp_path_factory.mktemp("hardening")
    for name, text in YAML.items():
        (tmp / f"{name}.yaml").write_text(text)
    (tmp / "empty").mkdir()
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "precious.txt").write_text("not the demo's")
    for variant in ("hosp_nogender", "hosp_empty", "hosp_cut", "hosp_noomr"):
        shutil.copytree(HOSP, tmp / variant)
    patients = pd.read_csv(HOSP / "patients.csv.gz")
    patients.drop(columns=["gender"]).to_csv(tmp / "hosp_nogender" / "patients.csv.gz",
                                             index=False)
    (tmp / "hosp_empty" / "patients.csv.gz").write_bytes(gzip.compress(b""))
    raw = (HOSP / "patients.csv.gz").read_bytes()
    (tmp / "hosp_cut" / "patients.csv.gz").write_bytes(raw[: len(raw) // 2])
    (tmp / "hosp_noomr" / "omr.csv.gz").unlink()
    return tmp


def run_job(job: str, args: list[str], cwd: Path, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.pop("RAY_ADDRESS", None)          # a private Ray where one starts, never the suite's
    env["CLEF_LOG_DIR"] = str(cwd / "logs")
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=() if c.before_ray else pytest.mark.slow) for c in CASES],
    ids=[c.id for c in CASES])
def test_bad_input_gets_one_named_line(case: Case, inputs: Path):
    args = [a.replace("{tmp}", str(inputs)) for a in case.args]
    done = run_job(case.job, args, inputs)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == case.status, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    errors = [line for line in lines if line.startswith(f"{case.job}: ")]
    assert len(errors) == 1, lines
    assert case.culprit in errors[0], errors[0]
    if case.before_ray:
        assert lines == errors, lines          # nothing started, nothing else said
    else:
        assert errors[0] == lines[-1]


@pytest.mark.slow
def test_ids_that_sanitise_alike_are_all_stored(tmp_path):
    """`ecgé` / `ecgü` (both `ecg` once cleaned) and a garbled `rec 1` next to a valid `rec_1`:
    four real LUDB records (data/ludb, ODbL-By), all four stored under distinct ids, the raw
    names kept in the manifest's native_ids."""
    import json

    from clef_platform.layout.dataset import open_dataset

    src = tmp_path / "src"
    src.mkdir()
    names = {"ecgé": "1", "ecgü": "2", "rec 1": "3", "rec_1": "4"}
    for name, ludb in names.items():
        shutil.copy(LUDB / "data" / f"{ludb}.dat", src / f"{ludb}.dat")
        shutil.copy(LUDB / "data" / f"{ludb}.hea", src / f"{name}.hea")
    done = run_job("ingest", ["--corpus", "wfdb", "--source", str(src), "--dest",
                              str(tmp_path / "ds"), "--no-progress", "--split-ratios",
                              "train=1"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = open_dataset(str(tmp_path / "ds")).frame()
    assert len(manifest) == 4 and manifest["record_id"].nunique() == 4
    assert manifest["key"].nunique() == 4
    raw = {json.loads(n)["record_name"] for n in manifest["native_ids"]}
    assert raw == set(names)
    by_raw = dict(zip((json.loads(n)["record_name"] for n in manifest["native_ids"]),
                      manifest["record_id"]))
    assert by_raw["rec_1"] == "rec_1"                    # a safe id is kept as it is
    assert by_raw["rec 1"].startswith("rec_1_") and by_raw["ecgé"] != by_raw["ecgü"]


@pytest.mark.slow
def test_damaged_shards_fail_at_once_without_restarts(ludb_train_data, tmp_path):
    """Every train shard of a copy of LUDB damaged in place (same size, bytes flipped): the
    workers' shard check raises ShardError, which no restart heals, so the run fails at its
    first failure with --max-failures 2: zero worker-group restarts, the shard named."""
    from clef_platform.layout.errors import ShardError
    from clef_platform.train.config import PretrainConfig
    from clef_platform.train.run import run_pretraining

    data = tmp_path / "ludb"
    shutil.copytree(ludb_train_data["data"], data)
    for shard in sorted((data / "shards").glob("train-*.tar")):
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
        shard.write_bytes(bytes(raw))
    cfg = PretrainConfig.from_args([
        "--scale", "small", "--method", "clef", "--data", str(data),
        "--features", ludb_train_data["features"], "--storage", str(tmp_path / "runs"),
        "--run-name", "damaged", "--workers", "2", "--batch-per-worker", "4",
        "--cpus-per-worker", "0.5", "--steps", "4", "--max-failures", "2"])
    res = run_pretraining(cfg, raise_on_error=False)
    assert res.error is not None
    assert res.restarts == 0
    # A ShardError, or torch's RuntimeError wrapping it when a DataLoader worker raised it.
    assert isinstance(res.fatal, (ShardError, RuntimeError)) and "ShardError" in (
        type(res.fatal).__name__ + str(res.fatal)) and "train-" in str(res.fatal)


def _evaluate(run: Path, data_root: Path, cwd: Path) -> subprocess.CompletedProcess:
    return run_job("evaluate", ["--run", str(run), "--data-root", str(data_root), "--tasks",
                                "ludb_sex", "--n-bootstrap", "10", "--no-random-baseline",
                                "--actors", "1", "--allow-no-lineage", "--retries", "0"], cwd)


def _failed_line(done: subprocess.CompletedProcess, job: str, kind: str = "failed") -> str:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"{job}: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert errors[0].startswith(f"{job}: {kind}: "), errors[0]
    return errors[0]


@pytest.mark.slow
def test_damaged_stored_data_fails_an_evaluation_naming_it(ludb_train_data, tmp_path):
    """jobs/evaluate.py over a copy of ingested LUDB (ODbL-By) and a committed export: a probe
    shard with bytes overwritten, then (repaired, scored once) a stored result object cut in
    half. Each exits 1 with one line naming the shard or the object, no traceback."""
    from clef_platform.layout.dataset import open_dataset
    from tests import damage
    from tests.fixtures import write_export

    data = tmp_path / "data"
    shutil.copytree(ludb_train_data["data"], data / "ludb")
    shard = open_dataset(str(data / "ludb")).split_shards("train")[0]
    path = data / "ludb" / shard.key
    good = path.read_bytes()
    run = tmp_path / "runs" / "r"
    write_export(str(run), 2, "small", seed=0)

    damage.overwrite_signal(path)
    line = _failed_line(_evaluate(run, data, tmp_path), "evaluate")
    assert f"shard {shard.name}" in line and "ludb_sex" in line, line

    path.write_bytes(good)
    done = _evaluate(run, data, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stored, = (run / "eval" / "results").glob("*.json")
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    done = _evaluate(run, data, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert stored.name in _failed_line(done, "evaluate")


@pytest.mark.slow
def test_corrupt_checkpoint_snapshot_is_named_not_ignored(ludb_train_data, tmp_path):
    """A run whose Ray Train checkpoint snapshot is cut short: `--resume` stops with one line
    naming the snapshot, where reading it as "no snapshot" would have turned the
    registered-checkpoint filter off and trained on."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    snapshot = run / "checkpoint_manager_snapshot.json"
    snapshot.write_text('{"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_2026')
    done = run_job("pretrain", [
        "--scale", "small", "--method", "simclr", "--data", ludb_train_data["data"],
        "--storage", str(tmp_path / "runs"), "--run-name", "r", "--resume", "--workers", "1",
        "--batch-per-worker", "4", "--cpus-per-worker", "0.5", "--steps", "2"], tmp_path)
    # Exit 2, as for any checkpoint that cannot be used as it is: checked before training.
    assert done.returncode == 2, done.stderr[-3000:]
    line = _failed_line(done, "pretrain", kind="error")
    assert str(snapshot) in line and "not a readable Ray Train checkpoint snapshot" in line
    assert not list(run.glob("checkpoint_0*")), "it trained on"
    # the throughput page drawn from the same record names it too (one owner reads it)
    page = run_job("report", ["--run", str(run)], tmp_path)
    assert page.returncode == 2, page.stderr[-3000:]
    line = _failed_line(page, "report", kind="error")
    assert str(snapshot) in line and "not a readable Ray Train checkpoint snapshot" in line
