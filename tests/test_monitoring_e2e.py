"""The platform's metrics through Ray's pipeline into a real Prometheus (issue 13).

One module-scoped run shared by every check: jobs/monitor.py starts Prometheus (stopped by its
PID); a 2-worker CPU pretraining on the LUDB fixture (rank 1 stalls once, on purpose), an
ingest of the bundled LUDB records (some made unreadable, to be quarantined) and a probe pass
over the run's export run with CLEF_MONITORING=1, so their local Ray starts its metrics agent
and Prometheus finds it through Ray's service-discovery file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from clef_platform.monitoring.catalog import ALLOWED_LABELS, CATALOG
from clef_platform.monitoring.panels import PANELS, substitute
from clef_platform.monitoring.prometheus import api, query_range
from clef_platform.monitoring.ray_local import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN = "mon"
STEPS, BATCH, STALL_STEP, STALL_S, STALL_ALERT_S = 40, 8, 30, 10.0, 4.0
LOST_SIGNALS, QUARANTINE_ALERT = 30, 0.1   # of LUDB's 200 records: 15 % quarantined
# Ray's own labels on every application metric, and Prometheus's target labels
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "instance", "job",
              "le", "otel_scope_name", "otel_scope_schema_url", "otel_scope_version", "__name__"}

TRAIN = """
import json, sys
from clef_platform.train.config import PretrainConfig
from clef_platform.train.run import run_pretraining
cfg = PretrainConfig.from_args(json.loads(sys.argv[1]))
res = run_pretraining(cfg, raise_on_error=False, loop_hooks=json.loads(sys.argv[2]))
print("RESULT " + json.dumps({"error": None if res.error is None else repr(res.error),
      "metrics": {k: v for k, v in res.metrics.items() if isinstance(v, (int, float, str))}}))
"""


class AlertWatch(threading.Thread):
    """Poll Prometheus's alerts API during the run; keep every alert seen firing."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.firing, self.stop = url, [], threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            try:
                alerts = api(self.url, "alerts")["alerts"]
            except OSError:
                continue
            self.firing += [a for a in alerts if a["state"] == "firing"]


def _env(ray_tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Linger: 5 s file refresh + 5 s Prometheus's target hand-over + 1 s scrape (ray_local.linger)
    env.update(CLEF_MONITORING="1", RAY_TMPDIR=ray_tmp, CLEF_MONITORING_LINGER="12",
               RAY_USAGE_STATS_ENABLED="0")
    return env


@pytest.fixture(scope="module")
def monitored_run(ludb_train_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitored")
    ray_tmp = tempfile.mkdtemp(prefix="cm", dir="/tmp")   # short: Ray's socket paths
    env, port = _env(ray_tmp), free_port()
    mon_log = open(root / "monitor.log", "wb")
    monitor = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "monitor.py"), "--data-dir", str(root / "prom"),
         "--port", str(port), "--ray-discovery",
         f"{ray_tmp}/ray/prom_metrics_service_discovery.json", "--scrape-interval", "1s",
         "--stall-seconds", str(STALL_ALERT_S), "--quarantine-share", str(QUARANTINE_ALERT)],
        env=env, stdout=mon_log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while b"Prometheus " not in (root / "monitor.log").read_bytes():
            assert monitor.poll() is None and time.monotonic() < deadline, \
                (root / "monitor.log").read_text()
            time.sleep(0.3)
        watch = AlertWatch(url)
        watch.start()
        args = ["--scale", "small", "--method", "clef", "--data", ludb_train_data["data"],
                "--features", ludb_train_data["features"], "--storage", str(root / "runs"),
                "--run-name", RUN, "--workers", "2", "--cpus-per-worker", "1",
                "--data.loader_workers", "1", "--batch-per-worker", str(BATCH),
                "--steps", str(STEPS), "--checkpoint-every", str(STEPS), "--address", "local",
                "--metrics.log_every", "10",
                # a stand-in for a measured peak, so the MFU gauge is exported
                "--metrics.peak_flops", "5e10"]
        hooks = {"stall": {"rank": 1, "step": STALL_STEP, "seconds": STALL_S}}
        t0 = time.time()
        train = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(args), json.dumps(hooks)],
                               env=env, capture_output=True, text=True, timeout=600)
        t1 = time.time()
        lines = [ln for ln in train.stdout.splitlines() if ln.startswith("RESULT ")]
        assert train.returncode == 0 and lines, train.stdout[-3000:] + train.stderr[-5000:]
        result = json.loads(lines[-1][len("RESULT "):])
        assert result["error"] is None, result

        # LUDB with the signal files of some records lost: they are quarantined
        # (missing_signal_file), for the quarantine panel
        source = root / "ludb-src"
        shutil.copytree(REPO / "data" / "ludb" / "data", source)
        for dat in sorted(source.glob("*.dat"))[:LOST_SIGNALS]:
            dat.unlink()
        dest = root / "ludb"
        ingest = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "ingest.py"), "--corpus", "ludb", "--source",
             str(source), "--dest", str(dest), "--workers", "1",
             "--cpus-per-worker", "0.5", "--shard-bytes", "1000000", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=600)
        (root / "ingest.log").write_text(ingest.stdout + ingest.stderr)
        (root / "train.log").write_text(train.stdout + train.stderr)
        assert ingest.returncode == 0, ingest.stdout[-2000:] + ingest.stderr[-3000:]

        # one linear-probe pass over the run's export on that dataset, for the eval panels (age:
        # a regression, so the few records left after leakage exclusion still give a result)
        evaluate = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--run", str(root / "runs" / RUN),
             "--tasks", "ludb_age", "--data-root", str(root), "--no-random-baseline",
             "--n-bootstrap", "50", "--num-cpus", "2"],
            env=env, capture_output=True, text=True, timeout=600)
        (root / "evaluate.log").write_text(evaluate.stdout + evaluate.stderr)
        assert evaluate.returncode == 0, evaluate.stdout[-2000:] + evaluate.stderr[-3000:]
        assert json.loads(evaluate.stdout)["added"] == 1, evaluate.stdout
        t2 = time.time()
        watch.stop.set()
        watch.join()
        yield {"url": url, "train": result, "t0": t0, "t1": t1, "t2": t2, "dest": dest,
               "firing": watch.firing, "ray_tmp": ray_tmp, "root": root}
    finally:
        if monitor.poll() is None:
            os.kill(monitor.pid, signal.SIGTERM)           # monitor.py stops Prometheus by PID
            monitor.wait(30)
        mon_log.close()


def _raw(url: str, selector: str, end: float, seconds: int) -> list[dict]:
    """Every raw sample of `selector` over the last `seconds` before `end`."""
    return api(url, "query", query=f"{selector}[{seconds}s]", time=end)["result"]


def test_prometheus_scraped_the_targets_of_rays_discovery_file(monitored_run):
    r = monitored_run
    sd = json.loads(Path(r["ray_tmp"], "ray", "prom_metrics_service_discovery.json").read_text())
    targets = {t for group in sd for t in group["targets"]}
    up = api(r["url"], "query", query='max_over_time(up{job="ray"}[30s]) == 1',
             time=r["t2"])["result"]
    assert targets and {s["metric"]["instance"] for s in up} & targets, (targets, up)


def test_samples_rate_agrees_with_the_trainer(monitored_run):
    r, url = monitored_run, monitored_run["url"]
    series = _raw(url, f'clef_train_samples_total{{run="{RUN}"}}', r["t1"] + 2,
                  int(r["t1"] - r["t0"]) + 5)
    assert {s["metric"]["rank"] for s in series} == {"0", "1"}
    rates = []
    for s in series:
        pts = [(float(t), float(v)) for t, v in s["values"]]
        values = [v for _, v in pts]
        assert values == sorted(values), "a counter went down"
        assert values[-1] == STEPS * BATCH             # every step of this rank counted
        # from the first scrape after the first step (the trainer leaves it out too) to the
        # first scrape showing the last step
        ta, va = next(p for p in pts if p[1] > 0)
        tb, vb = next(p for p in pts if p[1] == values[-1])
        rates.append((vb - va) / (tb - ta))
    trainer = r["train"]["metrics"]["samples_per_s"]      # global, over the steps after the first
    prom = sum(rates)
    print(f"samples/s: Prometheus {prom:.2f}, trainer {trainer:.2f}, ratio {prom / trainer:.3f}")
    assert prom == pytest.approx(trainer, rel=0.10)


def test_counters_only_grow(monitored_run):
    r, url = monitored_run, monitored_run["url"]
    seconds = int(r["t2"] - r["t0"]) + 5
    seen = set()
    for m in CATALOG:
        if m.kind != "counter":
            continue
        for s in _raw(url, m.name, r["t2"] + 2, seconds):
            values = [float(v) for _, v in s["values"]]
            assert values == sorted(values), (m.name, s["metric"])
            seen.add(m.name)
    assert {"clef_train_samples_total", "clef_train_views_total", "clef_train_steps_total",
            "clef_train_flops_total", "clef_ingest_records_total", "clef_ingest_bytes_total",
            "clef_ingest_shards_total"} <= seen


def test_ingest_counts_reach_prometheus(monitored_run):
    import pyarrow.parquet as pq

    r, url = monitored_run, monitored_run["url"]
    stored = pq.read_table(r["dest"] / "manifest.parquet").num_rows
    quarantined = pq.read_table(r["dest"] / "quarantine.parquet").num_rows
    got = {s["metric"]["outcome"]: float(s["value"][1]) for s in api(
        url, "query", query='max_over_time(clef_ingest_records_total{corpus="ludb"}[5m])',
        time=r["t2"] + 1)["result"]}
    assert quarantined == LOST_SIGNALS
    assert got.get("stored") == stored and got.get("quarantined", 0.0) == quarantined, \
        (got, (r["root"] / "ingest.log").read_text()[-4000:])


def test_the_stall_alert_fired(monitored_run):
    names = {(a["labels"]["alertname"], a["labels"].get("run")) for a in monitored_run["firing"]}
    assert ("ClefTrainingStalled", RUN) in names, monitored_run["firing"][-3:]


def test_the_quarantine_alert_fired(monitored_run):
    """15 % of the ingest's records quarantined against a 10 % threshold."""
    names = {(a["labels"]["alertname"], a["labels"].get("corpus")) for a in monitored_run["firing"]}
    assert ("ClefIngestQuarantineHigh", "ludb") in names, monitored_run["firing"][-3:]


def test_the_loss_alert_fires_on_a_nan_loss(monitored_run, ludb_train_data):
    """A second, short run under the same Prometheus whose rank 1 gets a NaN loss in step 3 (the
    loop's nan_loss hook): the run fails with the loop's FloatingPointError, and the alerts API
    shows ClefLossNotFinite firing for that run and rank, from the value the workers held on
    their metrics before failing (metrics.nonfinite_hold_s)."""
    run, root = "mon-nan", monitored_run["root"]
    args = ["--scale", "small", "--method", "clef", "--data", ludb_train_data["data"],
            "--features", ludb_train_data["features"], "--storage", str(root / "runs"),
            "--run-name", run, "--workers", "2", "--cpus-per-worker", "1",
            "--data.loader_workers", "0", "--batch-per-worker", str(BATCH), "--steps", "6",
            "--checkpoint-every", "6", "--address", "local", "--max-failures", "0",
            "--metrics.nonfinite_hold_s", "8"]
    watch = AlertWatch(monitored_run["url"])
    watch.start()
    try:
        train = subprocess.run(
            [sys.executable, "-c", TRAIN, json.dumps(args),
             json.dumps({"nan_loss": {"rank": 1, "step": 2}})],
            env=_env(monitored_run["ray_tmp"]), capture_output=True, text=True, timeout=600)
    finally:
        watch.stop.set()
        watch.join()
    (root / "train-nan.log").write_text(train.stdout + train.stderr)
    lines = [ln for ln in train.stdout.splitlines() if ln.startswith("RESULT ")]
    assert train.returncode == 0 and lines, train.stdout[-3000:] + train.stderr[-5000:]
    error = json.loads(lines[-1][len("RESULT "):])["error"]
    assert error and "non-finite loss or gradients in step 3" in error, error
    fired = {(a["labels"]["alertname"], a["labels"].get("run"), a["labels"].get("rank"))
             for a in watch.firing}
    assert ("ClefLossNotFinite", run, "1") in fired, sorted(fired)


def test_no_label_is_a_patient_or_record_id(monitored_run):
    import pyarrow.parquet as pq

    r, url = monitored_run, monitored_run["url"]
    manifest = pq.read_table(r["dest"] / "manifest.parquet").to_pandas()
    ids = set(manifest["key"].astype(str)) | set(manifest["patient_id"].astype(str)) \
        | {f"{c}/{i}" for c, i in zip(manifest["corpus"], manifest["record_id"])}
    series = api(url, "series", **{"match[]": '{__name__=~"clef_.+"}',
                                   "start": r["t0"], "end": r["t2"] + 2})
    assert series
    for s in series:
        assert set(s) <= ALLOWED_LABELS | RAY_LABELS, s
        for name, value in s.items():
            if name in ALLOWED_LABELS:
                assert value not in ids or name == "rank", s


@pytest.mark.parametrize("panel", PANELS, ids=[f"{p.dashboard}:{p.title}" for p in PANELS])
def test_every_panel_query_returns_data_over_the_run(monitored_run, panel):
    """Table-driven over the panel definitions that drive the Grafana dashboards."""
    if panel.needs == "gpu":
        pytest.skip("needs a GPU: not produced by a CPU pretraining")
    r = monitored_run
    for q in panel.queries:
        expr = substitute(q.expr, run=RUN, rate_interval="10s")
        result = query_range(r["url"], expr, r["t0"], r["t2"] + 2, 2)
        values = [v for s in result for _, v in s["values"] if v not in ("NaN", "+Inf", "-Inf")]
        assert values, f"{panel.title}: {expr} returned no data over the run"


ARTEFACTS = REPO / "out" / "test-artefacts"


def _chromium(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           "--allow-file-access-from-files", *args],
                          capture_output=True, text=True, timeout=120)


def test_throughput_page_from_prometheus_loads_in_chromium(monitored_run):
    from clef_platform.layout.throughput import read_page_info

    r = monitored_run
    run = str(r["root"] / "runs" / RUN)
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "report.py"), "--run", run,
                        "--prometheus", r["url"], "--start", str(r["t0"]), "--end",
                        str(r["t2"] + 2), "--step", "2", "--rate-interval", "10s"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    index = Path(p.stdout.strip().splitlines()[-1])
    info = read_page_info(run)
    assert info["source"].startswith("Prometheus at")
    assert sorted(info["panels"] + list(info["missing"])) == sorted(x.title for x in PANELS)
    assert "Samples/s (global)" in info["panels"] and "Loss" in info["panels"]
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", index.as_uri()])
    assert 'data-images-ok="true"' in dom.stdout, dom.stdout[:2000] + dom.stderr[-2000:]
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "throughput-page.png"
    _chromium(["--window-size=1280,2400", f"--screenshot={shot}", index.as_uri()])
    assert shot.stat().st_size > 10_000


def test_throughput_page_without_prometheus_says_so(monitored_run, tmp_path):
    import shutil

    from clef_platform.layout.throughput import read_page_info

    run = tmp_path / RUN          # a copy: the page of the run above stays as it is
    shutil.copytree(monitored_run["root"] / "runs" / RUN, run)
    p = subprocess.run([sys.executable, str(REPO / "jobs" / "report.py"), "--run", str(run)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    info = read_page_info(str(run))
    assert info["source"] == "the trainer's own reports (no Prometheus ran)"
    assert "Loss" in info["panels"], info
    assert "no Prometheus ran" in Path(p.stdout.strip().splitlines()[-1]).read_text()
