"""How a job starts its local Ray: with or without Ray's metrics agent.

The metrics agent (which `ray.util.metrics` reports to, and which writes the Prometheus
service-discovery file `<ray temp>/prom_metrics_service_discovery.json`) belongs to Ray's
dashboard agent, so a local Ray started with `include_dashboard=False` exports no metric at all.
With CLEF_MONITORING=1 a job's local Ray starts its dashboard and metrics agent bound to
127.0.0.1 (Ray binds the agent to loopback only when the node's address is loopback) on a
chosen export port, and reports every second instead of every ten, so a short run is seen.
Without it, local Ray stays as light as before (2-core machines, the test suite).

Ray's temp root is RAY_TMPDIR (default /tmp): the discovery file of a local Ray is at
`discovery_file()`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

ENV = "CLEF_MONITORING"
PORT_ENV = "CLEF_RAY_METRICS_PORT"   # the metrics agent's export port (default: a free one)
REPORT_INTERVAL_MS = 1000
LINGER_ENV = "CLEF_MONITORING_LINGER"   # seconds a job's local Ray outlives its work (default 16)
_started_with_agent = False             # this process started a local Ray with the agent


def monitoring_on() -> bool:
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "0", "off", "false"):
        return False
    if value in ("1", "on", "true"):
        return True
    raise ValueError(f"{ENV}={value!r}: expected 1/on/true or 0/off/false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_ray_options() -> dict:
    """Keyword arguments for `ray.init(address="local", ...)`."""
    global _started_with_agent
    if not monitoring_on():
        return {"include_dashboard": False}
    _started_with_agent = True
    port = os.environ.get(PORT_ENV, "").strip()
    if port and not port.isdigit():
        raise ValueError(f"{PORT_ENV}={port!r}: expected a port number")
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1",
            "_node_ip_address": "127.0.0.1",
            "_metrics_export_port": int(port) if port else free_port(),
            "_system_config": {"metrics_report_interval_ms": REPORT_INTERVAL_MS}}


def linger(temp_dir: Path, wait_s: float = 30.0) -> None:
    """Before a job stops the local Ray it started with the agent (in `temp_dir`), keep it up
    until a Prometheus could have scraped the final counts, instead of losing them with the
    Ray session: wait until this node's metrics agent serves the platform's metrics (a short
    job can end before Ray's agent is up) and Ray's discovery file lists the agent (Ray writes
    it every 5 s), then CLEF_MONITORING_LINGER seconds: Prometheus re-reads the file every 5 s
    (monitor.py's refresh), hands new targets to its scrapers every 5 s, and scrapes every
    5 s (monitor.py's default), so 16 by default. A test scraping every second gets by with
    12 (seen: a new target's first scrape 8 s after the file listed it)."""
    if not _started_with_agent:
        return
    import time

    import ray

    value = os.environ.get(LINGER_ENV, "16")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{LINGER_ENV}={value!r}: expected seconds") from None
    if ray.is_initialized():
        node = next(n for n in ray.nodes() if n["NodeID"] == ray.get_runtime_context().get_node_id())
        target = f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not (_serves_platform_metrics(target)
                                                   and _listed(temp_dir, target)):
            time.sleep(0.5)
    time.sleep(seconds)


def _serves_platform_metrics(target: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=2) as r:
            return b"ray_clef_" in r.read()
    except OSError:
        return False            # the agent is not up yet


def _listed(temp_dir: Path, target: str) -> bool:
    """Whether the Ray in `temp_dir` lists `target` in its discovery file yet."""
    import json

    try:
        groups = json.loads((temp_dir / discovery_file().name).read_text())
    except (OSError, ValueError):
        return False            # not written yet (or mid-replace on a copying filesystem)
    return any(target in g.get("targets", []) for g in groups)


def ray_temp_root() -> Path:
    return Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray"


def discovery_file(temp_root: Path | None = None) -> Path:
    """Ray's Prometheus service-discovery file (written by the head's dashboard)."""
    return (temp_root or ray_temp_root()) / "prom_metrics_service_discovery.json"


def publish_discovery(temp_dir: Path) -> Path:
    """Point the default discovery path (<RAY_TMPDIR or /tmp>/ray/...) at the service-discovery
    file of a Ray started in a private temp folder (clef_platform.ray_session), so that
    `jobs/monitor.py` finds it without options. The newest monitored local Ray wins."""
    link = discovery_file()
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(temp_dir / link.name, tmp)
    os.replace(tmp, link)           # atomic: Prometheus never reads a missing file
    return link
