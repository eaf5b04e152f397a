"""The platform across separate hosts: the test bed of infra/testbed (network namespaces on one
bridge, each host with its own address and private /tmp), with a real Ray cluster, a moto S3
server and redis-server each on their own host.

One bed for the whole file (module fixture), built over the leftovers of a crashed earlier bed.
Order matters and is kept by the file: the first test checks what came up, the last one tears
the bed down and checks that nothing is left. Needs root; skips with the reason otherwise (CI
runs as root).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from infra.testbed import bed as testbed

REASON = testbed.unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.multihost,
              pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def bed():
    # A crashed earlier bed: a namespace of the bed's prefix with a process still inside.
    subprocess.run(["ip", "netns", "add", testbed.PREFIX + "stale"], check=True)
    stale = subprocess.Popen(["ip", "netns", "exec", testbed.PREFIX + "stale", "sleep", "600"],
                             start_new_session=True)
    links_before = _root_links()
    # three worker hosts: two train, the third is the standby a lost host's worker moves to
    b = testbed.Bed(testbed.BedConfig(workers=3))
    b.stale, b.links_before = stale, links_before      # for the first and the last test
    try:
        b.up()
        b.s3("head", "s3.create_bucket(Bucket='clef')")
        yield b
    finally:
        b.down()                                        # idempotent: the last test did it


def test_bed_comes_up_over_an_earlier_beds_leftovers(bed):
    # up removed the leftovers before building: the stale process is dead, its namespace gone
    bed.stale.wait(timeout=10)
    assert not testbed.alive(bed.stale.pid)
    assert testbed.PREFIX + "stale" not in testbed.bed_namespaces()
    assert set(testbed.bed_namespaces()) == {testbed.BRIDGE_NS} | {h.ns for h in bed.hosts.values()}

    # 4 Ray hosts, each known to the GCS by its own bed address
    ips = sorted(n["ip"] for n in bed.nodes())
    assert ips == sorted(bed.hosts[h].address for h in ("head", "w1", "w2", "w3"))
    assert all(ip.startswith("198.18.") for ip in ips)

    # S3 on its host, reached over the bridge from a worker host; Redis likewise
    bed.exec("w1", ["python", "-c",
                    "import boto3; s=boto3.client('s3'); s.create_bucket(Bucket='probe');"
                    "s.put_object(Bucket='probe', Key='k', Body=b'w1')"])
    got = bed.exec("w2", ["python", "-c",
                          "import boto3; print(boto3.client('s3').get_object("
                          "Bucket='probe', Key='k')['Body'].read().decode())"])
    assert got.stdout.strip() == "w1"
    host, port = bed.redis_address.split(":")
    pong = bed.exec("w2", ["python", "-c",
                           f"import redis; print(redis.Redis('{host}', {port}).ping())"])
    assert pong.stdout.strip() == "True"
    # servers are bound to their bed address, not to every interface
    assert "127.0.0.1" not in bed.s3_endpoint

    # private disks: a file in w1's /tmp is seen by no other host nor by the machine
    bed.exec("w1", ["sh", "-c", "echo mine > /tmp/only-w1"])
    assert bed.exec("w1", ["cat", "/tmp/only-w1"]).stdout.strip() == "mine"
    assert bed.exec("w2", ["test", "-e", "/tmp/only-w1"], check=False).returncode == 1
    assert not os.path.exists("/tmp/only-w1")
    # private processes: a host sees its own processes only (Ray finds its node's raylet by
    # listing processes)
    raylets = bed.exec("w2", ["sh", "-c", "ps -eo comm | grep -c raylet"], check=False)
    assert raylets.stdout.strip() == "1"
    # the checkout is read-only on every host
    assert bed.exec("w2", ["touch", str(testbed.ROOT / "x")], check=False).returncode != 0


def _find(node, key):
    """Every value stored under `key` anywhere in a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _find(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _find(v, key)


def _worker_addresses(bed) -> set[str]:
    return {h.address for n, h in bed.hosts.items() if n.startswith("w")}


def _reports(snap) -> list[dict]:
    """The training reports in a checkpoint record (dicts with the loop's figures)."""
    from clef_platform.layout.train_snapshot import loop_reports

    return loop_reports(snap, key="workers")


def _s3_keys(bed, prefix: str) -> list[str]:
    return bed.s3("head", f"r = s3.list_objects_v2(Bucket='clef', Prefix='{prefix}');"
                          "print('\\n'.join(o['Key'] for o in r.get('Contents', [])))").split()


def test_whole_pipeline_across_hosts_hands_over_only_through_s3_and_redis(bed):
    """Every stage is the command a user submits, its driver on a worker host; afterwards that
    host is stopped and its /tmp wiped, and the next stage's driver runs on another host. So
    whatever a stage needs from an earlier one can only have come through S3 or Redis."""

    def stage(driver: str, sid: str, argv: list[str]) -> str:
        p = bed.submit(argv, sid, driver=driver)
        assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
        bed.replace_host(driver)
        return p.stdout

    corpus, demo = "s3://clef/corpora/mimic-iv-ecg-demo", "s3://clef/datasets/mimic-iv-ecg-demo"
    # 1. the demo corpus (real LUDB signals paired ARTIFICIALLY with MIMIC-IV demo patients),
    #    built on w1 and kept in S3 as a raw WFDB corpus
    stage("w1", "pipe-corpus", ["python", "jobs/make_demo_corpus.py", "--ludb", "data/ludb",
                                "--mimic-hosp", "data/mimic-iv-demo/hosp", "--out", corpus,
                                "--holdout", "100"])
    # 2. ingest of that corpus from S3, Ray Data shard tasks on more than one host
    ingest = ["--shard-bytes", "1000000", "--workers", "2", "--cpus-per-worker", "0.5",
              "--no-progress"]
    stage("w2", "pipe-ingest-demo", ["python", "jobs/ingest.py", "--corpus", "mimic-iv-ecg",
                                     "--source", corpus, "--dest", demo, *ingest])
    hosts = set().union(*bed.job_task_hosts("pipe-ingest-demo", "_write_shard_row").values())
    assert len(hosts) >= 2 and hosts <= {"w1", "w2", "w3"}, hosts
    # 3. LUDB for the probes (and for the host-loss tests after this one)
    stage("w3", "pipe-ingest-ludb", ["python", "jobs/ingest.py", "--corpus", "ludb",
                                     "--source", "data/ludb", "--dest", "s3://clef/datasets/ludb",
                                     *ingest])
    # 4. the feature store: offline tables and registry published to S3, online store on the
    #    Redis host
    out = stage("w1", "pipe-features", [
        "python", "jobs/build_features.py", "--repo", "s3://clef/features",
        "--online-store", "redis", "--redis-connection", bed.redis_address,
        "--mimic-hosp", "data/mimic-iv-demo/hosp", "--manifest", demo])
    assert "feature repository: s3://clef/features" in out
    host, port = bed.redis_address.split(":")
    keys = bed.exec("w2", ["python", "-c",
                           f"import redis; print(redis.Redis('{host}', {port}).dbsize())"])
    assert int(keys.stdout.strip()) >= 100          # one hash per MIMIC-IV demo patient at least
    # 5. CLEF pretraining with one worker per host, risk from the published feature store
    stage("w2", "pipe-pretrain", [
        "python", "jobs/pretrain.py", "--scale", "small", "--method", "clef", "--no-deepspeed",
        "--data", demo, "--features", "s3://clef/features", "--storage", "s3://clef/runs",
        "--run-name", "pipeline", "--workers", "2", "--placement", "STRICT_SPREAD",
        "--cpus-per-worker", "1", "--batch-per-worker", "4", "--steps", "2",
        "--checkpoint-every", "2", "--data.loader_workers", "1"])
    snap = json.loads(bed.s3("w3", "print(s3.get_object(Bucket='clef', Key='runs/pipeline/"
                                   "checkpoint_manager_snapshot.json')['Body'].read().decode())"))
    workers = next(_find(snap, "workers"))
    assert len(set(workers)) == 2 and set(workers) <= _worker_addresses(bed), workers
    assert "runs/pipeline/exports/step_2/_COMPLETE" in _s3_keys(bed, "runs/pipeline/exports/")
    # 6. evaluation of the run's exports against the datasets, all read from S3
    stage("w3", "pipe-evaluate", [
        "python", "jobs/evaluate.py", "--run", "s3://clef/runs/pipeline",
        "--data-root", "s3://clef/datasets", "--pretrain-manifest", f"{demo}/manifest.parquet",
        "--pretrain-split", "train", "--tasks", "ludb_rhythm", "--n-bootstrap", "50"])
    report = _s3_keys(bed, "runs/pipeline/eval/")
    assert "runs/pipeline/eval/report/index.html" in report, report
    page = bed.s3("head", "print(s3.get_object(Bucket='clef', Key='runs/pipeline/eval/report/"
                          "index.html')['Body'].read().decode())")
    assert "ludb_rhythm" in page
    assert any(k.startswith("runs/pipeline/eval/results/") for k in report), report
    bed.wait_nodes(4)                       # every worker host back for the tests after this


def _prometheus_query(bed, promql: str) -> list[dict]:
    """An instant query to the Prometheus on the head host (it listens on the head's loopback)."""
    from urllib.parse import urlencode
    url = "http://127.0.0.1:9090/api/v1/query?" + urlencode({"query": promql})
    out = bed.exec("head", ["python", "-c", "import json, urllib.request\n"
                            f"r = json.load(urllib.request.urlopen({url!r}, timeout=10))\n"
                            "print(json.dumps(r['data']['result']))"])
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_prometheus_on_the_head_scrapes_training_workers_on_other_hosts(bed):
    # jobs/monitor.py on the head: Prometheus scrapes the targets of Ray's service-discovery
    # file, i.e. the metrics agent of every node, where the training workers' metrics (recorded
    # through ray.util.metrics) are exported
    prom = bed.spawn("head", "monitor", [
        "python", "jobs/monitor.py", "--data-dir", "/tmp/monitor", "--port", "9090",
        "--ray-discovery", "/tmp/ray/prom_metrics_service_discovery.json",
        "--scrape-interval", "2s"])
    try:
        train = bed.submit(["python", "jobs/pretrain.py", "--scale", "small", "--method",
                            "simclr", "--no-deepspeed", "--data", "s3://clef/datasets/ludb",
                            "--storage", "s3://clef/runs", "--run-name", "scraped",
                            "--workers", "2", "--placement", "STRICT_SPREAD",
                            "--cpus-per-worker", "1", "--batch-per-worker", "4",
                            "--steps", "12", "--checkpoint-every", "12",
                            "--data.loader_workers", "1"], "pretrain-scraped")
        assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
        time.sleep(6)                                   # a scrape after the last step
        series = _prometheus_query(bed, 'clef_train_samples_total{run="scraped"}')
        assert prom.poll() is None, bed.log("head", "monitor")[-3000:]
    finally:
        # stop monitor.py (which stops its Prometheus) by its PID on the head host
        for pid in testbed.namespace_pids(bed.hosts["head"].ns):
            try:
                if b"jobs/monitor.py" in open(f"/proc/{pid}/cmdline", "rb").read():
                    os.kill(pid, signal.SIGTERM)
            except (FileNotFoundError, ProcessLookupError):
                pass
        prom.wait(timeout=60)
    # one series per rank, each scraped from the metrics agent of the host its worker ran on
    hosts = {s["metric"]["instance"].rsplit(":", 1)[0] for s in series}
    ranks = {s["metric"]["rank"] for s in series}
    assert ranks == {"0", "1"} and len(hosts) == 2 and hosts <= _worker_addresses(bed), series
    # each rank trained 12 steps of 4 records (the agents export every few seconds, so the
    # last scrape may be a step or two behind)
    assert all(0 < float(s["value"][1]) <= 48 for s in series), series


def _train_hosts(bed) -> list[str]:
    """Hosts with a Ray Train worker process running."""
    found = []
    for name, h in bed.hosts.items():
        for pid in testbed.namespace_pids(h.ns):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except FileNotFoundError:
                continue
            if b"RayTrainWorker" in cmd:
                found.append(name)
                break
    return found


def test_worker_host_lost_during_pretraining_resumes_on_the_standby(bed):
    # runs after the two-host test, whose ingest left s3://clef/datasets/ludb
    steps, every = 30, 5
    submit = bed.spawn("head", "submit-loss", [
        "ray", "job", "submit", "--address", bed.dashboard_url, "--submission-id", "host-loss",
        "--working-dir", str(testbed.ROOT), "--", "python", "jobs/pretrain.py", "--scale",
        "small", "--method", "simclr", "--no-deepspeed", "--data", "s3://clef/datasets/ludb",
        "--storage", "s3://clef/runs", "--run-name", "host-loss", "--workers", "2",
        "--placement", "STRICT_SPREAD", "--cpus-per-worker", "1", "--batch-per-worker", "4",
        "--steps", str(steps), "--checkpoint-every", str(every), "--data.loader_workers", "1",
        "--max-failures", "2"])
    victim = None
    try:
        # wait for the first registered checkpoint, then lose one of the two training hosts
        marker = f"runs/host-loss/exports/step_{every}/_COMPLETE"
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and submit.poll() is None:
            keys = bed.s3("w1", "r = s3.list_objects_v2(Bucket='clef', Prefix='runs/host-loss/');"
                                "print('\\n'.join(o['Key'] for o in r.get('Contents', [])))")
            if marker in keys.split():
                break
            time.sleep(2)
        assert submit.poll() is None, bed.log("head", "submit-loss")[-3000:]
        before = _train_hosts(bed)
        assert len(before) == 2, before
        victim = before[1]
        killed = bed.stop_host(victim, signal.SIGKILL)
        assert killed
        assert submit.wait(timeout=600) == 0, bed.log("head", "submit-loss")[-4000:]
    finally:
        if submit.poll() is None:
            submit.kill()
        if victim is not None:           # restore the bed for the tests after this one
            bed.wipe_tmp(victim)
            bed.start_ray_worker(victim)
            bed.wait_nodes(4)
    snap = json.loads(bed.s3("w1", "print(s3.get_object(Bucket='clef', Key='runs/host-loss/"
                                   "checkpoint_manager_snapshot.json')['Body'].read().decode())"))
    last = _reports(snap)[-1]
    standby = _worker_addresses(bed) - {bed.hosts[h].address for h in before}
    # finished with its step count, on the surviving host and the standby, resumed from a
    # registered checkpoint (not from step 0)
    assert last["step"] == steps
    assert set(last["workers"]) == standby | {bed.hosts[before[0]].address}
    assert bed.hosts[victim].address not in last["workers"]
    assert last["resumed_from"] >= every and last["resumed_from"] % every == 0
    # the schedule is intact: the last step's learning rate is the schedule's value at that step
    from clef_platform.train.config import PretrainConfig
    from clef_platform.train.schedule import warmup_cosine
    from clef_platform.train.recipes import SCALED_REFERENCE_BATCH, lr_factor
    cfg = PretrainConfig.preset("small")
    # the scaled recipe's lr for this run's global batch (2 workers x 4), then the schedule
    lr = cfg.optim.lr * lr_factor(cfg.optim.lr_scaling, 2 * 4, SCALED_REFERENCE_BATCH["small"])
    want = lr * warmup_cosine(steps, cfg.optim.warmup_steps, steps, cfg.optim.min_lr_ratio)
    assert abs(last["lr"] - want) <= 1e-9 + 1e-6 * want, (last["lr"], want)


def _dataset_fingerprint(bed, prefix: str) -> dict:
    """The dataset digest in the manifest and every shard's name, SHA-256 and stored bytes."""
    out = bed.s3("w1", "import io, hashlib, pyarrow.parquet as pq\n"
                       f"p = '{prefix}'\n"
                       "get = lambda k: s3.get_object(Bucket='clef', Key=k)['Body'].read()\n"
                       "m = pq.read_table(io.BytesIO(get(p + '/manifest.parquet')))\n"
                       "sh = pq.read_table(io.BytesIO(get(p + '/shards.parquet'))).to_pylist()\n"
                       "print(json.dumps({'digest': m.schema.metadata[b'clef.dataset_digest'].decode(),"
                       " 'records': m.num_rows, 'shards': sorted((r['shard'], r['sha256'],"
                       " hashlib.sha256(get(p + '/shards/' + r['shard'] + '.tar')).hexdigest())"
                       " for r in sh)}))")
    return json.loads(out.strip().splitlines()[-1])


def _task_hosts(bed) -> list[str]:
    """Worker hosts with a Ray worker process executing a task (not idle)."""
    found = []
    for name, h in bed.hosts.items():
        if not name.startswith("w"):
            continue
        for pid in testbed.namespace_pids(h.ns):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except FileNotFoundError:
                continue
            if cmd.startswith(b"ray::") and not cmd.startswith(b"ray::IDLE"):
                found.append(name)
                break
    return found


def test_worker_host_lost_during_ingest_gives_a_byte_identical_dataset(bed):
    # the clean run is the two-host test's s3://clef/datasets/ludb
    clean = _dataset_fingerprint(bed, "datasets/ludb")
    submit = bed.spawn("head", "submit-ingest-loss", [
        "ray", "job", "submit", "--address", bed.dashboard_url, "--submission-id", "ingest-loss",
        "--working-dir", str(testbed.ROOT), "--", "python", "jobs/ingest.py", "--corpus", "ludb",
        "--source", "data/ludb", "--dest", "s3://clef/datasets/ludb-loss", "--shard-bytes",
        "1000000", "--workers", "2", "--cpus-per-worker", "0.5", "--no-progress"])
    victim = None
    try:
        # lose a host while it runs shard tasks, after the first shard is committed
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and submit.poll() is None and victim is None:
            keys = bed.s3("w1", "r = s3.list_objects_v2(Bucket='clef', "
                                "Prefix='datasets/ludb-loss/_ingest/parts/');"
                                "print(r.get('KeyCount', 0))")
            busy = _task_hosts(bed)
            if int(keys.split()[-1]) > 0 and busy:
                victim = busy[0]
                assert bed.stop_host(victim, signal.SIGKILL)
            else:
                time.sleep(0.5)
        assert victim is not None, "the ingest finished before a host could be lost"
        assert submit.wait(timeout=600) == 0, bed.log("head", "submit-ingest-loss")[-4000:]
    finally:
        if submit.poll() is None:
            submit.kill()
        if victim is not None:
            bed.wipe_tmp(victim)
            bed.start_ray_worker(victim)
            bed.wait_nodes(4)
    assert _dataset_fingerprint(bed, "datasets/ludb-loss") == clean


def test_bed_teardown_leaves_nothing(bed):
    inodes = bed.namespace_inodes()
    pids = [p for ns in testbed.bed_namespaces() for p in testbed.namespace_pids(ns)]
    assert len(pids) > 10          # keepers, raylets, GCS, moto, redis, Ray's agents...
    # (PID, start time): other work on the machine may reuse a PID after teardown
    seen = {p: testbed.started_at(p) for p in pids}
    bed.down()
    # nothing left: no namespace, no link in the machine's namespace, no process in any bed
    # namespace, none of the processes seen while the bed was up
    assert testbed.bed_namespaces() == []
    assert _root_links() == bed.links_before
    assert testbed.processes_in(inodes) == []
    assert [p for p in pids if testbed.alive(p) and testbed.started_at(p) == seen[p]] == []
