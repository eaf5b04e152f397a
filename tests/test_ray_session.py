"""The jobs' Ray session (clef_platform/ray_session.py), as users run the jobs:

- while a local ingest, a pretraining run and an evaluation run, no socket of theirs or of the
  Ray they started listens on anything but loopback (the process trees' sockets, read with
  psutil every 0.2 s), except the one port docs/security.md names: rank 0's torch.distributed
  TCPStore during pretraining;
- SIGKILL of a job's driver leaves no process behind after 10 s: none whose command line names
  the job's Ray temp folder, and none of the driver's recorded process tree.
Real LUDB records (data/ludb, ODbL-By); each job gets a private Ray (RAY_ADDRESS removed).
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LUDB = REPO / "data" / "ludb"


def job_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["CLEF_LOG_DIR"] = str(tmp / "logs")
    return env


def start(job: str, args: list[str], tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / f"{job}.py"), *args], cwd=tmp,
                            env=job_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def listeners(procs: list[psutil.Process]) -> set[tuple[str, str, int]]:
    out = set()
    for p in procs:
        try:
            for c in p.net_connections("inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((p.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
    return out


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def run_watching(job: str, args: list[str], tmp: Path, timeout: float = 600):
    """Runs the job to its end, reading its process tree's listening sockets meanwhile."""
    proc = start(job, args, tmp)
    seen: set = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listeners(tree(proc.pid))
        time.sleep(0.2)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, seen


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


def test_local_jobs_listen_on_loopback_only(work):
    datasets = work / "datasets"
    rc, out, err, seen = run_watching("ingest", [
        "--corpus", "ludb", "--source", str(LUDB), "--dest", str(datasets / "ludb"),
        "--shard-bytes", "2MB", "--no-progress"], work)
    assert rc == 0, err[-3000:]
    all_seen = {"ingest": seen}
    rc, out, err, seen = run_watching("pretrain", [
        "--scale", "small", "--method", "simclr", "--data", str(datasets / "ludb"),
        "--storage", str(work / "runs"), "--run-name", "r", "--workers", "2",
        "--batch-per-worker", "4", "--cpus-per-worker", "0.5", "--steps", "2",
        "--checkpoint-every", "2", "--metrics-port", "0"], work)
    assert rc == 0, err[-3000:]
    all_seen["pretrain"] = seen
    rc, out, err, seen = run_watching("evaluate", [
        "--run", str(work / "runs" / "r"), "--data-root", str(datasets), "--tasks",
        "ludb_sex", "--n-bootstrap", "10", "--no-random-baseline", "--actors", "1"], work)
    assert rc == 0, err[-3000:]
    all_seen["evaluate"] = seen
    for job, socks in all_seen.items():
        # Ray's GCS and raylet listen in every job: an empty set would mean nothing was read.
        assert any(name == "gcs_server" for name, _, _ in socks), (job, socks)
        exposed = sorted(s for s in socks if not is_loopback(s[1]))
        if job == "pretrain":
            # The one documented exception (docs/security.md): rank 0's torch.distributed
            # TCPStore, the process group's rendezvous, which torch binds to every interface
            # with no option to do otherwise. One port, in a Ray worker process, nothing else.
            # The process's title names the task it runs at the moment it is read
            # (ray::RayTrainWorker, ray::execute._setup_torch_process_group, ...), so the
            # store is told by being one port of a ray:: process.
            store = [s for s in exposed if s[0].startswith("ray::")]
            assert len({s[2] for s in store}) <= 1, store
            exposed = [s for s in exposed if s not in store]
        assert not exposed, (job, exposed)


def ray_temp_dir(procs: list[psutil.Process]) -> str | None:
    """The job's Ray temp folder, as its processes' command lines name it."""
    for p in procs:
        try:
            m = re.search(r"/tmp/clef-ray-[A-Za-z0-9_]+", " ".join(p.cmdline()))
        except psutil.Error:
            continue
        if m:
            return m.group(0)
    return None


@pytest.mark.parametrize("job", ["ingest", "pretrain"])
def test_sigkill_of_the_driver_leaves_no_process(job, work, tmp_path):
    if job == "ingest":
        args = ["--corpus", "ludb", "--source", str(LUDB), "--dest", str(tmp_path / "ds"),
                "--shard-bytes", "2MB", "--no-progress"]
    else:
        data = work / "datasets" / "ludb"
        if not (data / "manifest.parquet").exists():
            pytest.skip("needs the dataset of test_local_jobs_listen_on_loopback_only")
        args = ["--scale", "small", "--method", "simclr", "--data", str(data), "--storage",
                str(tmp_path / "runs"), "--run-name", "k", "--workers", "2",
                "--batch-per-worker", "4", "--cpus-per-worker", "0.5", "--steps", "50"]
    proc = start(job, args, tmp_path)
    recorded: dict[int, float] = {}
    temp = None
    deadline = time.monotonic() + 300
    # Until Ray's workers are up (a raylet and at least one worker process in the tree).
    while time.monotonic() < deadline and proc.poll() is None:
        procs = tree(proc.pid)
        for p in procs:
            try:
                recorded[p.pid] = p.create_time()
            except psutil.Error:
                pass
        temp = temp or ray_temp_dir(procs)
        names = " ".join(p.name() for p in procs if p.is_running())
        if temp and "raylet" in names and len(procs) >= 8:
            break
        time.sleep(0.2)
    assert proc.poll() is None and temp, "the job ended before Ray was up"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(10)
    left = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        named = temp in " ".join(p.info["cmdline"] or ())
        ours = recorded.get(p.info["pid"]) == p.info["create_time"]
        if named or ours:
            left.append((p.info["pid"], " ".join(p.info["cmdline"] or ())[:120]))
    assert not left, left
