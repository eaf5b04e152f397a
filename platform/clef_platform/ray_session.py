"""The one way a job gets Ray: start a private local instance on loopback, or join the cluster
the user named. Never joins silently.

    with ray_session(RaySessionConfig(address=args.address, num_cpus=4)):
        ...   # ray.* calls

Which Ray (`address`, else $RAY_ADDRESS):
- empty, or "local": a private instance, started here and shut down here (also on error and on
  SIGTERM). Every one of its servers listens on 127.0.0.1 only (see `_loopback_node`); it uses a
  temp folder of its own, `/tmp/clef-ray-XXXX`, and a watchdog (`ray_watchdog`) that stops
  whatever of it is left when the driver dies without shutting down (SIGKILL, OOM kill).
- anything else ("auto", "10.0.0.5:6379", "ray://..."): join that cluster and only disconnect
  at the end. `ray job submit` sets RAY_ADDRESS, so submitted jobs join the cluster they were
  submitted to.
- Ray already initialised in this process (tests, notebooks): used as it is, left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger("clef_platform.ray_session")


@dataclass
class RaySessionConfig:
    address: str = ""              # "" = $RAY_ADDRESS, else local; "local"; or a cluster to join
    num_cpus: float | None = None  # logical CPUs of a local instance (None = Ray's count)
    log_to_driver: bool = True     # echo workers' output to the driver's stdout


@dataclass
class RaySession:
    started: bool                  # True: this session started the local instance (owns it)
    address: str                   # the GCS address
    temp_dir: str | None           # the local instance's temp folder


def target_address(address: str = "") -> str:
    """What `address` resolves to: "local" or the cluster address to join."""
    return address or os.environ.get("RAY_ADDRESS", "") or "local"


def _loopback_node() -> None:
    """Make a local instance use 127.0.0.1 as its node address.

    Ray turns an explicit `_node_ip_address="127.0.0.1"` into the host's network address
    (`services.resolve_ip_for_localhost`) unless clusters are disabled, which is what it does on
    macOS/Windows: then the node address is 127.0.0.1, and with it every gRPC server (GCS,
    raylet, workers, agents) and the autoscaler's and dashboard's metrics servers bind to
    loopback (measured with psutil: no other listener is left). The switch is read once, when
    ray_constants is imported, so set both the variable (for the processes Ray starts) and the
    imported constant (ray may already be imported in this process)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _quiet_data() -> None:
    """Ray Data's own progress bars and per-execution banners off: jobs report their own
    progress (one bar or log line), and Ray Data's repeated every few seconds through the demo's
    output. Set on the driver's DataContext, which Ray Data ships with every execution."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data's logger has a console handler of its own (it does not propagate): give it the
    # jobs' stderr format, masked and a traceback cut to one line. The whole traceback stays in
    # Ray Data's ray-data.log in the session folder, as the job's own go to its log file.
    from clef_platform.logs import FORMAT, MaskingFormatter

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setFormatter(MaskingFormatter(FORMAT, tracebacks=False,
                                                  details="Ray Data's ray-data.log"))


def _start_watchdog(temp_dir: str) -> subprocess.Popen:
    # A session of its own: a kill of the driver's process group must not take it along.
    return subprocess.Popen(
        [sys.executable, "-m", "clef_platform.ray_watchdog", str(os.getpid()), temp_dir],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, close_fds=True)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM becomes SystemExit(143) so that `finally` blocks (ray.shutdown) run."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_session(cfg: RaySessionConfig | None = None) -> Iterator[RaySession]:
    cfg = cfg or RaySessionConfig()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        yield RaySession(started=False, address=ray.get_runtime_context().gcs_address,
                         temp_dir=None)
        return
    target = target_address(cfg.address)
    with _sigterm_raises():
        if target != "local":
            ray.init(address=target, log_to_driver=cfg.log_to_driver)
            log.info("joined the Ray cluster at %s", target)
            _quiet_data()
            try:
                yield RaySession(started=False, address=ray.get_runtime_context().gcs_address,
                                 temp_dir=None)
            finally:
                ray.shutdown()            # disconnects this driver; the cluster stays
            return
        _loopback_node()
        # Short: Ray's unix socket paths under it must stay below 108 bytes.
        temp_dir = tempfile.mkdtemp(prefix="clef-ray-", dir="/tmp")
        watchdog = _start_watchdog(temp_dir)
        try:
            from clef_platform.monitoring import ray_local

            # CLEF_MONITORING=1: with Ray's dashboard and metrics agent (on 127.0.0.1 too)
            options = {"include_dashboard": False, "dashboard_host": "127.0.0.1",
                       **ray_local.local_ray_options()}
            ray.init(address="local", num_cpus=cfg.num_cpus, _temp_dir=temp_dir,
                     log_to_driver=cfg.log_to_driver, **options)
            log.info("started a local Ray instance on 127.0.0.1 (temp folder %s)", temp_dir)
            if options["include_dashboard"]:
                ray_local.publish_discovery(Path(temp_dir))
            _quiet_data()
            yield RaySession(started=True, address=ray.get_runtime_context().gcs_address,
                             temp_dir=temp_dir)
            ray_local.linger(Path(temp_dir))   # on success only: the last counts reach Prometheus
        finally:
            ray.shutdown()
            # The watchdog ends by itself when this process exits (after stopping anything
            # ray.shutdown left); it is not waited for.
            del watchdog
