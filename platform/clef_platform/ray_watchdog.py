"""Stops a job's local Ray when the job's driver dies, however it dies (SIGKILL included).

    python -m clef_platform.ray_watchdog DRIVER_PID RAY_TEMP_DIR

Started by `ray_session` in a session of its own (a SIGKILL of the driver's process group does
not reach it) before the driver starts Ray. Ray's head processes are children of the driver, but
its agents and workers are not all: when the driver dies without `ray.shutdown()`, the dashboard
and runtime-env agents were seen to live on. So, every half second, the watchdog records the
driver's process tree; once the driver is gone it stops every recorded process that still runs
(same PID and start time: never a reused PID), every process whose command line names the
job's Ray temp folder, and their children: SIGTERM, then SIGKILL after a grace period. Only
psutil is imported: it must start in well under a second.
"""

from __future__ import annotations

import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0


def _tree(root: psutil.Process) -> dict[int, float]:
    out = {}
    for p in root.children(recursive=True):
        try:
            out[p.pid] = p.create_time()
        except psutil.Error:
            pass
    return out


def _leftovers(seen: dict[int, float], temp_dir: str) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                found[pid] = p
        except psutil.Error:
            pass
    for p in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or ()):
            found[p.pid] = p
    for p in list(found.values()):
        try:
            for c in p.children(recursive=True):
                found[c.pid] = c
        except psutil.Error:
            pass
    found.pop(psutil.Process().pid, None)
    return list(found.values())


def watch(driver_pid: int, temp_dir: str) -> None:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        driver = None
    seen: dict[int, float] = {}
    while driver is not None and driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            seen.update(_tree(driver))
        except psutil.Error:
            break
        time.sleep(POLL_S)
    procs = _leftovers(seen, temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
