"""A local Prometheus for the platform: its config, its process, and queries against it.

The config scrapes Ray's service-discovery file (every Ray node's metrics agent, where the
platform's ray.util.metrics land) and any platform endpoints given (prometheus_client exporters
of jobs outside Ray), strips Ray's `ray_` prefix from `ray_clef_*` so every platform metric has
its catalog name, and loads the alert rules (monitoring.alerts). Prometheus listens on
127.0.0.1 only and keeps its data under the given folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clef_platform.monitoring.alerts import AlertConfig, write_rules
from clef_platform.monitoring.ray_local import discovery_file

log = logging.getLogger(__name__)

# Ray names application metrics ray_<name>; the platform's get their catalog names back.
STRIP_RAY_PREFIX = {"source_labels": ["__name__"], "regex": "ray_(clef_.*)",
                    "target_label": "__name__", "replacement": "$1"}


@dataclass
class PrometheusConfig:
    data_dir: Path = Path("out/monitor")
    port: int = 9090
    host: str = "127.0.0.1"
    ray_discovery: Path | None = None          # default: <RAY_TMPDIR or /tmp>/ray/...json
    targets: list[str] = field(default_factory=list)   # host:port of platform endpoints
    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    alerts: AlertConfig = field(default_factory=AlertConfig)
    retention: str = "15d"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        for t in self.targets:
            host, _, port = t.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--target {t!r}: expected host:port")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def scrape_config(cfg: PrometheusConfig) -> dict:
    sd = cfg.ray_discovery or discovery_file()
    jobs = [{"job_name": "ray", "file_sd_configs": [{"files": [str(sd)], "refresh_interval": "5s"}],
             "metric_relabel_configs": [STRIP_RAY_PREFIX]}]
    if cfg.targets:
        jobs.append({"job_name": "clef", "static_configs": [{"targets": list(cfg.targets)}]})
    return {"global": {"scrape_interval": cfg.scrape_interval,
                       "evaluation_interval": cfg.evaluation_interval},
            "rule_files": [str((cfg.data_dir / "clef-rules.yml").resolve())],
            "scrape_configs": jobs}


def write_config(cfg: PrometheusConfig) -> Path:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    write_rules(cfg.data_dir / "clef-rules.yml", cfg.alerts)
    path = cfg.data_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(scrape_config(cfg), sort_keys=False))
    return path


def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        raise FileNotFoundError("prometheus not found on PATH: run infra/setup/bootstrap.sh "
                                "(installs Debian's prometheus where missing)")
    return exe


class PrometheusServer:
    """The prometheus process, started in its own process group and stopped by its PID."""

    def __init__(self, cfg: PrometheusConfig) -> None:
        self.cfg = cfg
        config = write_config(cfg)
        self.log_path = cfg.data_dir / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}",
             f"--storage.tsdb.path={cfg.data_dir / 'data'}",
             f"--storage.tsdb.retention.time={cfg.retention}",
             f"--web.listen-address={cfg.host}:{cfg.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{self.cfg.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready on {self.cfg.url} after {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)      # Prometheus flushes its head block on TERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# ---- the HTTP API -------------------------------------------------------------------------

def api(url: str, path: str, **params) -> dict | list:
    """GET <url>/api/v1/<path>; returns its `data`, or raises naming Prometheus's error."""
    q = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}{'?' + q if q else ''}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus {path}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query_range(url: str, promql: str, start: float, end: float, step: float) -> list[dict]:
    return api(url, "query_range", query=promql, start=start, end=end, step=step)["result"]
