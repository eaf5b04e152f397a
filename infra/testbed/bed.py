"""A multi-host test bed on one machine: each host a network namespace with its own address and
its own private /tmp and HOME, all joined by one bridge that lives in a namespace of its own.

    python infra/testbed/bed.py up [--workers 2] [--standby 1]   # head, workers, s3, redis
    python infra/testbed/bed.py status
    python infra/testbed/bed.py down                              # also cleans a crashed bed

Why namespaces: a second host catches what one host hides (a server bound to loopback, a file on
a disk only one host reads, gloo on the wrong interface). Each host is anchored by a "keeper"
process (`sleep`) that holds its network namespace, a private mount namespace in which /tmp
is a fresh tmpfs and the checkout is re-mounted read-only, and its own PID namespace (with its
own /proc); every other process of the host is entered into the keeper's namespaces with
`nsenter`, so processes of one host share one disk and no host sees another's disk or
processes. The PID namespace matters: Ray finds "the raylet of this node" by listing processes,
and a driver that saw every host's raylets took the head's address for its own. Only the
checkout and the virtualenv are shared, read-only.

Addresses come from the RFC 2544 benchmarking range 198.18.0.0/15, which no real network uses.
Every process is started and stopped by PID; `down` kills the PIDs it started and then every
PID still inside a bed namespace (`ip netns pids`), deletes the namespaces (their veth ends go
with them) and is safe to call on a half-built or crashed bed. `up` cleans a previous bed's
leftovers first and refuses to start if they cannot be removed.

Needs root (CAP_NET_ADMIN for the links, CAP_SYS_ADMIN for the mounts): `unavailable_reason()`
says why not, for tests to skip with.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "clefbed-"               # every namespace of a bed; leftovers are found by it
BRIDGE_NS = PREFIX + "br"
SUBNET = "198.18.0"               # RFC 2544: never a range that exists on a real network
HOST_IF = "eth0"                  # the interface name inside every host
RAY_PORT = 6379
DASHBOARD_PORT = 8265
S3_PORT = 5000
REDIS_PORT = 6379
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21


def unavailable_reason() -> str | None:
    """None when this process can build a bed, else the reason (for pytest.skip)."""
    if sys.platform != "linux":
        return "the multi-host test bed needs Linux network namespaces"
    caps = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
    missing = [n for n, bit in (("CAP_NET_ADMIN", _CAP_NET_ADMIN), ("CAP_SYS_ADMIN", _CAP_SYS_ADMIN))
               if not caps >> bit & 1]
    if missing:
        return f"the multi-host test bed needs {' and '.join(missing)} (run as root)"
    for tool in ("ip", "unshare", "nsenter", "redis-server"):
        if shutil.which(tool) is None:
            return f"the multi-host test bed needs `{tool}` on PATH"
    return None


def _run(argv: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p


def bed_namespaces() -> list[str]:
    """Every network namespace a bed (this one or a crashed earlier one) created."""
    out = _run(["ip", "netns", "list"]).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(PREFIX))


def namespace_pids(ns: str) -> list[int]:
    p = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []


def _kill(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds, each by PID."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    """True while the process runs (a zombie child of ours is reaped and counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours is dead for every purpose here; reap it
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):   # gone between the signal and the read
        return False
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def started_at(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the PID, an identity that a
    reused PID does not share), None when it has ended."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def processes_in(inodes: set[int]) -> list[int]:
    """PIDs of every process on the machine whose network namespace is one of `inodes`."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.stat(d / "ns" / "net").st_ino in inodes:
                    found.append(int(d.name))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue     # the process ended while we looked
    return found


def clean_leftovers() -> list[str]:
    """Remove every bed namespace and every process inside one; returns what it removed."""
    removed = []
    for ns in bed_namespaces():
        pids = namespace_pids(ns)
        # Until the namespace is empty: a process may start while the others are stopped, and a
        # SIGKILLed one (a host's PID 1 takes its whole PID namespace with it) takes a moment
        # to exit. PID 1 of a host ignores SIGTERM from outside; SIGKILL follows the grace.
        deadline = time.monotonic() + 30
        left = pids
        while left and time.monotonic() < deadline:
            _kill(left, grace=2.0)
            time.sleep(0.2)
            left = [p for p in namespace_pids(ns) if alive(p)]
        # a host's PID 1 leaves its namespaces first, then waits for the rest of its PID
        # namespace to be reaped: gone from `ip netns pids` is not yet gone
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(f"{ns} ({len(pids)} processes)")
    return removed


@dataclass
class Host:
    name: str
    address: str
    keeper: subprocess.Popen | None = None     # `unshare`, in the machine's PID namespace
    inner: int | None = None                   # the keeper's `sleep`: PID 1 of the host
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return PREFIX + self.name


@dataclass
class BedConfig:
    workers: int = 2                 # Ray worker hosts that join at start
    standby: int = 0                 # extra hosts with nothing running (for host-loss tests)
    cpus_per_host: int = 2           # Ray logical CPUs per worker host (2 cores shared by all)
    head_cpus: int = 0               # the head keeps the GCS and drivers; work goes to workers
    tmpfs_size: str = "2g"
    log_dir: Path = Path("/tmp/clefbed-logs")   # on the machine, outside every host


class Bed:
    """Hosts `head`, `w1..wN`, standby `s1..sM` (Ray not started), `s3` (moto), `redis`."""

    def __init__(self, cfg: BedConfig | None = None):
        self.cfg = cfg or BedConfig()
        names = (["head"] + [f"w{i}" for i in range(1, self.cfg.workers + 1)]
                 + [f"s{i}" for i in range(1, self.cfg.standby + 1)] + ["s3", "redis"])
        self.hosts = {n: Host(n, f"{SUBNET}.{10 + i}") for i, n in enumerate(names)}
        # One token per bed for Ray's token authentication; only ever in process environments.
        self._ray_token = secrets.token_hex(32)
        self.up_done = False

    # ---- addresses every stage needs
    @property
    def ray_gcs(self) -> str:
        return f"{self.hosts['head'].address}:{RAY_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.hosts['head'].address}:{DASHBOARD_PORT}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.hosts['s3'].address}:{S3_PORT}"

    @property
    def redis_address(self) -> str:
        return f"{self.hosts['redis'].address}:{REDIS_PORT}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every process on every host: private HOME, the venv, dummy S3."""
        env = {
            "PATH": f"{ROOT}/.venv/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/tmp/home",
            "TMPDIR": "/tmp",
            "PYTHONPATH": f"{ROOT}/platform:{ROOT}",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self._ray_token,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "CLEF_REDIS": self.redis_address,
        }
        env.update(extra)
        return env

    # ---- running things on a host
    def _enter(self, host: str) -> list[str]:
        h = self.hosts[host]
        if h.keeper is None or h.inner is None or not alive(h.inner):
            raise RuntimeError(f"host {host} is not up")
        return ["nsenter", "-t", str(h.inner), "-n", "-m", "-p", f"--wd={ROOT}", "--"]

    def exec(self, host: str, argv: list[str], timeout: float = 600, check: bool = True,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run argv on `host` to completion; output captured."""
        p = subprocess.run(self._enter(host) + argv, capture_output=True, text=True,
                           timeout=timeout, env=self.env(**(env or {})))
        if check and p.returncode != 0:
            raise RuntimeError(f"on {host}: `{' '.join(argv)}` exited {p.returncode}:\n"
                               f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p

    def spawn(self, host: str, name: str, argv: list[str],
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a long-running process on `host`; its PID is kept, its log is on the machine."""
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.cfg.log_dir / f"{host}-{name}.log", "ab")
        p = subprocess.Popen(self._enter(host) + argv, stdout=log, stderr=subprocess.STDOUT,
                             env=self.env(**(env or {})), start_new_session=True)
        log.close()
        self.hosts[host].procs[name] = p
        return p

    def log(self, host: str, name: str) -> str:
        path = self.cfg.log_dir / f"{host}-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- building and removing the bed
    def up(self) -> "Bed":
        # Each host's /tmp is a fresh tmpfs mounted over the machine's: a checkout under /tmp
        # would vanish inside every host ("mount: /tmp/...: mount point does not exist")
        for path in (ROOT, (ROOT / ".venv").resolve()):
            if path == Path("/tmp") or Path("/tmp") in path.parents:
                raise RuntimeError(f"testbed: {path} is under /tmp, which every bed host replaces "
                                   "with its own; put the checkout (and its .venv) elsewhere")
        left = clean_leftovers()
        if left:
            print(f"testbed: removed a previous bed's leftovers: {', '.join(left)}", file=sys.stderr)
        if bed_namespaces():
            raise RuntimeError(f"testbed: leftovers could not be removed: {bed_namespaces()}")
        if self.cfg.log_dir.exists():
            shutil.rmtree(self.cfg.log_dir)
        try:
            self._links()
            for h in self.hosts.values():
                self._start_keeper(h)
            self.start_service("s3")
            self.start_service("redis")
            self.start_ray_head()
            for n in self.hosts:
                if n.startswith("w"):
                    self.start_ray_worker(n)
            self.wait_nodes(1 + self.cfg.workers)
            self.wait_port("s3", S3_PORT)
            self.wait_port("redis", REDIS_PORT)
        except BaseException:
            self.down()
            raise
        self.up_done = True
        return self

    def namespace_inodes(self) -> set[int]:
        """The bed's network namespaces as the kernel names them (to find any process inside)."""
        return {os.stat(f"/run/netns/{ns}").st_ino for ns in bed_namespaces()}

    def _links(self) -> None:
        _run(["ip", "netns", "add", BRIDGE_NS])
        br = ["ip", "-n", BRIDGE_NS]
        _run(br + ["link", "add", "br0", "type", "bridge"])
        _run(br + ["link", "set", "br0", "up"])
        for h in self.hosts.values():
            _run(["ip", "netns", "add", h.ns])
            # both ends are created where they live: nothing ever appears in the machine's own
            # namespace, so a crash can leave nothing outside the bed namespaces
            _run(br + ["link", "add", f"v-{h.name}", "type", "veth",
                       "peer", "name", HOST_IF, "netns", h.ns])
            _run(br + ["link", "set", f"v-{h.name}", "master", "br0", "up"])
            hn = ["ip", "-n", h.ns]
            _run(hn + ["addr", "add", f"{h.address}/24", "dev", HOST_IF])
            _run(hn + ["link", "set", HOST_IF, "up"])
            _run(hn + ["link", "set", "lo", "up"])

    def _start_keeper(self, h: Host) -> None:
        # The keeper's mount namespace is the host's disk: a tmpfs /tmp (with HOME in it) and the
        # checkout (and, through its .venv link, the virtualenv) read-only.
        venv = (ROOT / ".venv").resolve()
        script = (
            f"mount -t tmpfs -o size={self.cfg.tmpfs_size} tmpfs /tmp && mkdir -p /tmp/home && "
            f"mount --bind {ROOT} {ROOT} && mount -o remount,bind,ro {ROOT} && "
            f"mount --bind {venv} {venv} && mount -o remount,bind,ro {venv} && "
            "touch /tmp/.clefbed-ready && exec sleep infinity")
        # `ip netns exec` execs unshare, which forks the host's PID 1 (sh, which execs sleep)
        h.keeper = subprocess.Popen(
            ["ip", "netns", "exec", h.ns, "unshare", "-m", "-p", "--fork", "--mount-proc",
             "--propagation", "private", "sh", "-c", script], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if h.keeper.poll() is not None:
                raise RuntimeError(f"host {h.name}: keeper failed: {h.keeper.stderr.read()}")
            children = Path(f"/proc/{h.keeper.pid}/task/{h.keeper.pid}/children")
            kids = children.read_text().split() if children.exists() else []
            if kids:
                h.inner = int(kids[0])
                probe = subprocess.run(["nsenter", "-t", str(h.inner), "-m", "test", "-e",
                                        "/tmp/.clefbed-ready"], capture_output=True)
                if probe.returncode == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"host {h.name}: keeper not ready after 20 s")

    def start_service(self, name: str) -> None:
        h = self.hosts[name]
        if name == "s3":
            self.spawn(name, "moto", ["moto_server", "-H", h.address, "-p", str(S3_PORT)])
        elif name == "redis":
            # protected mode refuses every non-loopback client of a password-less server; here
            # the server is bound to its bed address only, on a link no real network reaches
            self.spawn(name, "redis", ["redis-server", "--bind", h.address, "--port",
                                       str(REDIS_PORT), "--save", "", "--appendonly", "no",
                                       "--dir", "/tmp", "--protected-mode", "no"])
        else:
            raise ValueError(f"no service host {name!r}")

    def start_ray_head(self) -> None:
        h = self.hosts["head"]
        self.spawn("head", "ray", [
            "ray", "start", "--head", "--block", f"--node-ip-address={h.address}",
            f"--port={RAY_PORT}", f"--dashboard-host={h.address}",
            f"--dashboard-port={DASHBOARD_PORT}", f"--num-cpus={self.cfg.head_cpus}",
            "--disable-usage-stats"])

    def start_ray_worker(self, name: str) -> None:
        h = self.hosts[name]
        self.spawn(name, "ray", [
            "ray", "start", "--block", f"--address={self.ray_gcs}",
            f"--node-ip-address={h.address}", f"--num-cpus={self.cfg.cpus_per_host}",
            "--disable-usage-stats"])

    def wait_port(self, host: str, port: int, timeout: float = 60) -> None:
        addr = self.hosts[host].address
        code = ("import socket,sys,time\n"
                f"end=time.time()+{timeout}\n"
                "while time.time()<end:\n"
                "    try:\n"
                f"        socket.create_connection(('{addr}',{port}),1).close(); sys.exit(0)\n"
                "    except OSError: time.sleep(0.2)\n"
                "sys.exit(1)\n")
        p = self.exec("head" if host != "head" else host, ["python", "-c", code],
                      timeout=timeout + 10, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"{host}:{port} not reachable from head after {timeout:.0f} s; "
                               f"log: {self.cfg.log_dir}")

    def nodes(self) -> list[dict]:
        """Alive Ray nodes as the GCS sees them (asked from the head host)."""
        code = ("import json,ray\n"
                "ray.init(address='auto',log_to_driver=False,configure_logging=False)\n"
                "print('nodes:', json.dumps([{'ip':n['NodeManagerAddress'],"
                "'cpus':n['Resources'].get('CPU',0)} for n in ray.nodes() if n['Alive']]))\n")
        p = self.exec("head", ["python", "-c", code], timeout=120)
        # Ray may print its own notices on stdout too (seen: "raylet has lagging heartbeats")
        line = next(ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("nodes: "))
        return json.loads(line.removeprefix("nodes: "))

    def wait_nodes(self, n: int, timeout: float = 240) -> list[dict]:
        deadline = time.monotonic() + timeout
        self.wait_port("head", DASHBOARD_PORT, timeout=timeout)
        while True:
            for name, h in self.hosts.items():
                p = h.procs.get("ray")
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"ray on {name} exited {p.returncode}:\n"
                                       f"{self.log(name, 'ray')[-2000:]}")
            nodes = self.nodes()
            if len(nodes) >= n:
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of {n} Ray nodes after {timeout:.0f} s")
            time.sleep(2)

    def submit(self, argv: list[str], submission_id: str, timeout: float = 900,
               host: str = "head", driver: str | None = None) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir . -- argv` to the head's dashboard, run from `host`
        (the command a user runs); waits for the job and returns the CLI's outcome. `driver`:
        the host whose node runs the job's entrypoint (through Ray's `node:<address>`
        resource), by default the head."""
        placement = [] if driver is None else [
            "--entrypoint-resources",
            json.dumps({f"node:{self.hosts[driver].address}": 0.001})]
        return self.exec(host, ["ray", "job", "submit", "--address", self.dashboard_url,
                                "--submission-id", submission_id, "--working-dir", str(ROOT),
                                *placement, "--", *argv], timeout=timeout, check=False)

    def job_task_hosts(self, submission_id: str, name_contains: str) -> dict[str, set[str]]:
        """For a finished submitted job: task name -> the hosts its tasks ran on (Ray's state
        API, asked from the head), for tasks whose name contains `name_contains`."""
        code = (
            "import json\n"
            "from ray.job_submission import JobSubmissionClient\n"
            "from ray.util.state import list_nodes, list_tasks\n"
            f"job = JobSubmissionClient({self.dashboard_url!r}).get_job_info({submission_id!r})\n"
            f"addr = {self.dashboard_url!r}\n"
            "ips = {n.node_id: n.node_ip for n in list_nodes(address=addr, limit=10000)}\n"
            "tasks = list_tasks(address=addr, filters=[('job_id', '=', job.job_id)],\n"
            "                   limit=10000, raise_on_missing_output=False)\n"
            f"print(json.dumps([[t.name, ips.get(t.node_id)] for t in tasks"
            f" if {name_contains!r} in t.name]))\n")
        rows = json.loads(self.exec("head", ["python", "-c", code], timeout=120)
                          .stdout.strip().splitlines()[-1])
        by_ip = {h.address: n for n, h in self.hosts.items()}
        out: dict[str, set[str]] = {}
        for name, ip in rows:
            out.setdefault(name, set()).add(by_ip.get(ip, str(ip)))
        return out

    def replace_host(self, name: str) -> None:
        """Stop every process of a Ray worker host, empty its /tmp, start its Ray again: what
        the host held on its disk is gone (the next stage must not need it)."""
        self.stop_host(name)
        self.wipe_tmp(name)
        self.start_ray_worker(name)

    def s3(self, host: str, code: str) -> str:
        """Run Python `code` with `s3` (a boto3 client of the bed's S3) on `host`; its stdout."""
        return self.exec(host, ["python", "-c", "import boto3, json\n"
                                "s3 = boto3.client('s3')\n" + code]).stdout

    def stop_host(self, name: str, sig: int = signal.SIGTERM) -> list[int]:
        """Every process of the host except its keeper, by PID (SIGKILL: a lost host)."""
        h = self.hosts[name]
        keep = {h.keeper.pid, h.inner} if h.keeper else set()
        pids = [p for p in namespace_pids(h.ns) if p not in keep]
        if sig == signal.SIGKILL:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            _kill(pids)
        for p in h.procs.values():
            if p.poll() is None:
                p.wait(timeout=10)
        h.procs.clear()
        return pids

    def wipe_tmp(self, name: str) -> None:
        """Empty the host's private /tmp (its whole disk), keeping an empty HOME."""
        self.exec(name, ["sh", "-c", "find /tmp -mindepth 1 -delete && mkdir -p /tmp/home"])

    def down(self) -> None:
        """Stop every process (by PID), delete every namespace; safe on a half-built bed."""
        started = [p.pid for h in self.hosts.values() for p in h.procs.values()]
        _kill(started)
        for h in self.hosts.values():
            for p in h.procs.values():
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            h.procs.clear()
        clean_leftovers()           # every PID still in a bed namespace, then the namespaces
        for h in self.hosts.values():
            if h.keeper is not None:
                try:
                    h.keeper.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                h.keeper = None
                h.inner = None
        self.up_done = False

    def __enter__(self) -> "Bed":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a bed and keep it until Ctrl-C, then tear it down")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--standby", type=int, default=0)
    sub.add_parser("down", help="remove every bed namespace and process (a crashed bed too)")
    sub.add_parser("status", help="list bed namespaces and their processes")
    a = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"testbed: {reason}", file=sys.stderr)
        return 2
    if a.cmd == "down":
        print("\n".join(clean_leftovers()) or "nothing to remove")
    elif a.cmd == "status":
        for ns in bed_namespaces():
            print(ns, *namespace_pids(ns))
    else:
        bed = Bed(BedConfig(workers=a.workers, standby=a.standby))
        bed.up()
        try:
            print(f"bed up: ray {bed.ray_gcs}, dashboard {bed.dashboard_url}, "
                  f"s3 {bed.s3_endpoint}, redis {bed.redis_address}; Ctrl-C tears it down")
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            bed.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
