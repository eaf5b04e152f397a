"""The evaluation scheduler on real LUDB records: the CronJob's command run twice stores each
result once; --watch picks up an export written after it started and survives a task that
raises; Prometheus gauges; the report renders and names every task."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clef_platform.evaluate.metrics import EvalMetrics
from clef_platform.evaluate.passes import EvalConfig
from clef_platform.evaluate.probes import ProbeConfig
from clef_platform.evaluate.report import render_report
from clef_platform.evaluate.tasks import load_task, load_tasks
from clef_platform.evaluate.watch import watch
from clef_platform.layout.results import ResultsStore
from tests.fixtures import (BUNDLED, ingest, raw_sha256, subset_folder, training_data,
                            write_export)
from tests.helpers import free_port, load_job

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CRONJOB = REPO / "infra" / "k8s" / "evaluate-cronjob.yaml"


@pytest.fixture(scope="module")
def data_root(ray_local, tmp_path_factory):
    """LUDB records 1-60 (38 M / 22 F, 42 sinus rhythm) ingested as dataset 'ludb', and records
    1-5 alone as dataset 'pretrain' (what the run of the CronJob test trained on)."""
    root = tmp_path_factory.mktemp("eval_sched")
    src = subset_folder(BUNDLED["ludb"], root / "src", [str(i) for i in range(1, 61)])
    ingest("ludb", src, str(root / "data" / "ludb"), shard_bytes=1_000_000)
    few = subset_folder(BUNDLED["ludb"], root / "src5", [str(i) for i in range(1, 6)])
    ingest("ludb", few, str(root / "data" / "pretrain"))
    return root / "data"


@pytest.fixture(scope="module")
def broken_task(tmp_path_factory):
    """A task that raises in its probe: a folds scheme on a field LUDB records do not have."""
    p = tmp_path_factory.mktemp("tasks") / "broken.yaml"
    p.write_text(yaml.safe_dump({
        "name": "broken_folds", "dataset": "ludb",
        "label": {"kind": "binary", "field": "sex", "positive": ["M"]},
        "scheme": {"kind": "folds", "field": "labels.no_such_fold", "train": [1], "val": [2],
                   "test": [3]}}))
    return load_task(p)


def cronjob_argv(env: dict[str, str]) -> list[str]:
    """The CronJob container's command + args, $(VAR) filled from its env, `env` overriding."""
    doc = yaml.safe_load(CRONJOB.read_text())
    c = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    values = {e["name"]: e["value"] for e in c["env"]} | env
    sub = lambda s: re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], s)  # noqa: E731
    return [sub(x) for x in c["command"] + c["args"]]


def test_cronjob_command_twice_stores_each_result_once(data_root, tmp_path, capsys):
    run = tmp_path / "runs" / "r1"
    # Lineage: trained on the train split of 'pretrain' (some of records 1-5); the CronJob's
    # --pretrain-manifest adds all five.
    write_export(str(run), 10, "small", seed=1,
                 training_data=[training_data(str(data_root / "pretrain"))])
    excluded = raw_sha256("ludb", BUNDLED["ludb"], ["1", "2", "3", "4", "5"])
    pd.DataFrame({"sha256": excluded}).to_parquet(tmp_path / "pretrain.parquet")
    argv = cronjob_argv({"CLEF_RUN_URL": str(run), "CLEF_DATA_ROOT": str(data_root),
                         "CLEF_PRETRAIN_MANIFEST": str(tmp_path / "pretrain.parquet")})
    assert argv[:2] == ["python", "jobs/evaluate.py"]

    # First run in this process (the session's Ray is already up, so the job joins it).
    assert load_job("evaluate").main(argv[2:]) == 0
    first = json.loads(capsys.readouterr().out)
    df1 = ResultsStore(str(run / "eval" / "results")).read()
    # 3 LUDB tasks x (export + random baseline); CinC / PTB-XL datasets absent -> skipped.
    assert first["added"] == 6 and len(df1) == 6
    assert set(first["missing_datasets"]) >= {"cinc2021_dx", "ptbxl_form"}
    assert set(df1["task"]) == {"ludb_rhythm", "ludb_sex", "ludb_age"}
    assert set(df1["kind"]) == {"export", "random"}
    assert (df1["n_excluded_leakage"] == 5).all() and (df1["status"] == "ok").all()
    assert (df1["n_test"] == 55).all()

    # Second run: the exact command in a fresh process, as cron would start it.
    proc = subprocess.run([sys.executable] + argv[1:], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert second["added"] == 0 and second["already_stored"] == 6
    df2 = ResultsStore(str(run / "eval" / "results")).read()
    pd.testing.assert_frame_equal(df1, df2)
    assert df2["key"].is_unique and len(list((run / "eval" / "results").iterdir())) == 6


@pytest.fixture(scope="module")
def watched(data_root, broken_task, tmp_path_factory):
    """--watch over a run: step 10 exists at start, step 20 is written while it runs."""
    run = tmp_path_factory.mktemp("watch") / "r2"
    write_export(str(run), 10, "small", seed=1)
    tasks = load_tasks(["ludb_sex"]) + [broken_task]
    cfg = EvalConfig(run_url=str(run), tasks=tasks, data_root=str(data_root),
                     random_baseline=False, retries=1, retry_delay_s=0.0,
                     allow_no_lineage=True,
                     probe=ProbeConfig(logistic_C=(0.1, 1.0), n_bootstrap=200))
    metrics = EvalMetrics()
    port = free_port()
    server, _ = metrics.serve(port)
    stop = threading.Event()
    passes: list = []
    th = threading.Thread(target=lambda: passes.extend(
        watch(cfg, interval=1.0, metrics=metrics, stop=stop)), daemon=True)
    th.start()
    store = ResultsStore(cfg.results_url)

    def wait_for(step: int, timeout: float = 400) -> pd.DataFrame:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            df = store.read()
            if ((df["step"] == step) & (df["task"] == "ludb_sex")).any():
                return df
            assert th.is_alive(), "watch loop died"
            time.sleep(1)
        raise AssertionError(f"no result for step {step} within {timeout}s")

    try:
        wait_for(10)
        write_export(str(run), 20, "small", seed=2)       # appears after the watcher started
        df = wait_for(20)
        time.sleep(1.5)                                     # let the pass finish its bookkeeping
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        stop.set()
        th.join(timeout=600)
        server.shutdown()
    return {"cfg": cfg, "df": store.read(), "passes": passes, "scrape": scrape.decode(),
            "metrics": metrics, "tasks": tasks}


def test_watch_picks_up_new_export_and_survives_a_raising_task(watched):
    df = watched["df"]
    ok = df[df["task"] == "ludb_sex"]
    assert sorted(ok["step"]) == [10, 20] and (ok["status"] == "ok").all()
    assert not (df["task"] == "broken_folds").any()           # a failure is never stored
    failed = [f for p in watched["passes"] for f in p.failed]
    assert any(t == "broken_folds" and "no_such_fold" in err for _, t, err in failed)
    # it failed on both exports, and the other task went on each time
    assert {c.rsplit("_", 1)[-1] for c, t, _ in failed if t == "broken_folds"} >= {"10", "20"}
    assert len(watched["passes"]) >= 2
    fails = watched["metrics"].registry.get_sample_value(
        "clef_eval_task_failures_total", {"task": "broken_folds"})
    assert fails >= 2


def test_prometheus_gauges_expose_latest_metric_per_task(watched):
    text = watched["scrape"]
    df = watched["df"]
    latest = df[(df["task"] == "ludb_sex") & (df["step"] == 20)].iloc[0]
    m = re.search(r'^clef_eval_metric\{metric="auroc",task="ludb_sex"\} (\S+)$', text, re.M)
    assert m and float(m.group(1)) == pytest.approx(latest["value"])
    assert re.search(r'^clef_eval_latest_step\{task="ludb_sex"\} 20\.0$', text, re.M)
    assert "ludb__" not in text and "record" not in text.replace("recorded", "")


def test_report_renders_and_names_every_task(watched, tmp_path):
    tasks = watched["tasks"] + load_tasks(["ludb_age", "ptbxl_form"])
    url = render_report(watched["df"], str(tmp_path / "report"), tasks, "r2",
                        missing=["ptbxl_form"])
    page = Path(url).read_text()
    for t in tasks:
        assert t.name in page
    png = (tmp_path / "report" / "ludb_sex.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert 'src="ludb_sex.png"' in page and "dataset not ingested" in page
    # the scheduler's own report is there too
    assert Path(watched["cfg"].report_url, "index.html").is_file()
