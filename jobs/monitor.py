"""A local Prometheus for the platform (`make monitor`): scrapes Ray's service-discovery file and
any platform endpoints, loads the alert rules, listens on 127.0.0.1, keeps its data under out/.

    .venv/bin/python jobs/monitor.py                       # then, in another shell:
    CLEF_MONITORING=1 .venv/bin/python jobs/pretrain.py ...   # local Ray with its metrics agent

Prints the URLs (Prometheus, the Ray dashboard) and runs until Ctrl-C or SIGTERM, then stops
Prometheus by its PID. docs/monitoring.md.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("out/monitor"),
                   help="Prometheus config, rules and TSDB (default out/monitor)")
    p.add_argument("--port", type=int, default=9090, help="Prometheus port on 127.0.0.1")
    p.add_argument("--ray-discovery", type=Path, default=None,
                   help="Ray's prom_metrics_service_discovery.json (default: "
                        "<RAY_TMPDIR or /tmp>/ray/prom_metrics_service_discovery.json)")
    p.add_argument("--target", action="append", default=[], metavar="HOST:PORT",
                   help="a platform prometheus_client endpoint to scrape too (repeatable)")
    p.add_argument("--scrape-interval", default="5s", help="Prometheus duration (default 5s)")
    p.add_argument("--stall-seconds", type=float, default=600.0,
                   help="alert when no training step for this long (default 600)")
    p.add_argument("--data-wait-share", type=float, default=0.5,
                   help="alert when data-wait exceeds this share of step time (default 0.5)")
    p.add_argument("--quarantine-share", type=float, default=0.2,
                   help="alert when this share of an ingest's records is quarantined (0.2)")
    p.add_argument("--alert-window", default="5m", help="rate window of the data-wait share alert")
    p.add_argument("--ray-dashboard", default="http://127.0.0.1:8265",
                   help="the Ray dashboard URL to print")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from clef_platform.monitoring.alerts import AlertConfig
    from clef_platform.monitoring.prometheus import PrometheusConfig, PrometheusServer

    try:
        alerts = AlertConfig(stall_seconds=a.stall_seconds, data_wait_share=a.data_wait_share,
                             quarantine_share=a.quarantine_share, window=a.alert_window)
        cfg = PrometheusConfig(data_dir=a.data_dir, port=a.port, ray_discovery=a.ray_discovery,
                               targets=a.target, scrape_interval=a.scrape_interval,
                               evaluation_interval=a.scrape_interval, alerts=alerts)
        server = PrometheusServer(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"monitor: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.wait_ready()
        print(f"Prometheus     {cfg.url}  (pid {server.pid}, data {cfg.data_dir})", flush=True)
        print(f"alerts         {cfg.url}/alerts", flush=True)
        print(f"Ray dashboard  {a.ray_dashboard}  (of a Ray started with CLEF_MONITORING=1)",
              flush=True)
        while not stop.wait(1.0):
            if server.proc.poll() is not None:
                print(f"monitor: prometheus exited with {server.proc.returncode} "
                      f"(log: {server.log_path})", file=sys.stderr)
                return 1
    except (RuntimeError, TimeoutError) as e:
        print(f"monitor: {e}", file=sys.stderr)
        server.stop()
        return 1
    server.stop()
    logging.info("prometheus (pid %d) stopped", server.pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
