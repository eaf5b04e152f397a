"""The Ray Data ingest pipeline on real bundled data (LUDB, CinC 2021) into local folders:
counts, lead order and values, shard format, patient-level splits, determinism, crash and
resume, quarantine, the job CLI with its Prometheus counters."""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import wfdb

from clef_model.leads import LEADS, lead_index
from clef_platform.layout.dataset import MANIFEST_KEY, PARTS_PREFIX, QUARANTINE_KEY
from clef_platform.ingest.pipeline import DestinationConflict, IngestConfig, run_ingest
from clef_platform.layout.shards import EncodedSample, ShardTarWriter, record_key
from clef_platform.ingest.splits import SplitRatios, assign_split
from clef_platform.loader import LoaderConfig, record_dataset
from tests.helpers import free_port, load_job

REPO = Path(__file__).resolve().parents[1]
LUDB = REPO / "data" / "ludb"
CINC = REPO / "data" / "cinc2021-sample"
SHARD_BYTES = 1_500_000          # ~12 records of 12 x 5000 int16 per shard
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

pytestmark = pytest.mark.slow



def ingest(corpus: str, source: Path, dest: Path, **kw) -> object:
    kw.setdefault("shard_bytes", SHARD_BYTES)
    return run_ingest(IngestConfig(corpus, source, str(dest), **kw))


def shard_digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "shards").glob("*.tar"))}


def manifest(root: Path):
    return pq.read_table(root / MANIFEST_KEY)


@pytest.fixture(scope="module")
def ludb_ds(ray_local, tmp_path_factory):
    dest = tmp_path_factory.mktemp("ludb") / "ds"
    return dest, ingest("ludb", LUDB, dest, workers=2)


@pytest.fixture(scope="module")
def cinc_ds(ray_local, tmp_path_factory):
    dest = tmp_path_factory.mktemp("cinc") / "ds"
    return dest, ingest("cinc2021", CINC, dest, workers=2)


# ----------------------------------------------------------------- no Ray: keys, tar writer

def test_record_keys_are_tar_safe_and_distinct():
    assert record_key("ludb", "17") == "ludb__17"
    odd = [record_key("c", x) for x in ("a.b", "a_b", "a/b", "../x", "é", "a" * 500)]
    assert all(KEY_RE.match(k) and len(k) < 200 for k in odd)
    assert len(set(odd)) == len(odd)


def test_tar_writer_refuses_unsorted_keys():
    with ShardTarWriter(io.BytesIO()) as w:
        w.add(EncodedSample("b", {"meta.json": b"{}"}, {}))
        with pytest.raises(ValueError):
            w.add(EncodedSample("a", {"meta.json": b"{}"}, {}))


def test_split_ratios_validated():
    assert SplitRatios.parse("train=0.7,val=0.2,test=0.1").names == ("train", "val", "test")
    for bad in ("train=0.5,val=0.2", "train=1.0,train=0.0", "Tr=1", "train"):
        with pytest.raises(ValueError):
            SplitRatios.parse(bad)


# ------------------------------------------------------------------------- LUDB and CinC

def test_counts_balance_and_shards(ludb_ds, cinc_ds):
    for (root, summary), n in ((ludb_ds, 200), (cinc_ds, 50)):
        assert summary.records_in == n and summary.balanced
        assert summary.stored == n and summary.quarantined == 0   # these corpora are clean
        m = manifest(root)
        assert m.num_rows == n
        keys = m.column("key").to_pylist()
        assert len(set(keys)) == n and all(KEY_RE.match(k) for k in keys)
        assert pq.read_table(root / QUARANTINE_KEY).num_rows == 0
        on_disk = {p.stem for p in (root / "shards").glob("*.tar")}
        assert on_disk == set(m.column("shard").to_pylist())
        assert summary.shards == len(on_disk) > 1
        assert all(p.stat().st_size <= SHARD_BYTES for p in (root / "shards").glob("*.tar"))
        assert summary.bytes == sum(p.stat().st_size for p in (root / "shards").glob("*.tar"))


def test_values_and_lead_order_round_trip(ludb_ds, cinc_ds):
    """Decoded mV equal wfdb's physical signal, lead by lead by name, within the quantum."""
    checked = 0
    for root, summary in (ludb_ds, cinc_ds):
        m = manifest(root).to_pylist()
        by_key = {r["key"]: r for r in m}
        corpus_src = LUDB if m[0]["corpus"] == "ludb" else CINC
        paths = {p.with_suffix("").name: p.with_suffix("") for p in corpus_src.rglob("*.hea")}
        for split in sorted({r["split"] for r in m}):
            for rec in record_dataset(LoaderConfig(str(root), split, mode="exact",
                                                   rank=0, world_size=1)):
                row = by_key[rec["key"]]
                assert rec["split"] == row["split"] == split
                assert rec["meta"]["leads"] == list(LEADS)
                sig, mask = rec["signal"], rec["lead_mask"]
                assert sig.dtype == np.float32 and sig.shape == (12, row["n_samples"])
                assert mask.tolist() == row["lead_mask"]
                w = wfdb.rdrecord(str(paths[rec["record_id"]]))
                assert sig.shape[1] == w.sig_len
                for c, name in enumerate(w.sig_name):
                    i = lead_index(name)
                    quantum = 1.0 / w.adc_gain[c]
                    err = np.nanmax(np.abs(sig[i] - w.p_signal[:, c]))
                    assert err <= 0.5 * quantum + 1e-4, (rec["key"], name, err)
                present = {lead_index(n) for n in w.sig_name}
                assert not sig[[i for i in range(12) if i not in present]].any()
                masked = [LEADS[i] for i in range(12) if not mask[i]]
                assert set(masked) <= set(json.loads(row["quality_flags"]))
                checked += 1
    assert checked == 250


def test_manifest_columns_and_sha256(ludb_ds):
    root, _ = ludb_ds
    m = manifest(root)
    for col in ("corpus", "record_id", "patient_id", "ecg_time", "age", "sex", "split", "shard",
                "sha256", "fs_original", "lead_mask", "quality_flags", "native_ids", "labels"):
        assert col in m.column_names
    rows = {r["key"]: r for r in m.to_pylist()}
    assert rows["ludb__1"]["patient_id"] == "ludb/1" and rows["ludb__1"]["sex"] in ("M", "F")
    shard = sorted((root / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        for mem in tar.getmembers():
            if mem.name.endswith(".signal.npy"):
                arr = np.load(io.BytesIO(tar.extractfile(mem).read()), allow_pickle=False)
                key = mem.name.split(".")[0]
                digest = hashlib.sha256(arr.astype("<i2").tobytes()).hexdigest()
                assert rows[key]["sha256"] == digest


def test_shard_tar_is_canonical(ludb_ds):
    root, _ = ludb_ds
    for shard in sorted((root / "shards").glob("*.tar"))[:3]:
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        keys = [n.split(".", 1)[0] for n in names[::2]]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert [n.split(".", 1)[1] for n in names] == ["meta.json", "signal.npy"] * len(keys)
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444)
            assert m.isfile()


def test_patient_level_splits(ludb_ds):
    root, _ = ludb_ds
    rows = manifest(root).to_pylist()
    splits_of: dict[str, set[str]] = {}
    for r in rows:
        assert r["split"] == assign_split(r["patient_id"], SplitRatios())
        assert r["shard"].startswith(r["split"] + "-")
        splits_of.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_two_runs_give_byte_identical_shards(ludb_ds, tmp_path):
    root, first = ludb_ds
    again = ingest("ludb", LUDB, tmp_path / "again", workers=1)     # other parallelism
    assert shard_digests(tmp_path / "again") == shard_digests(root)
    assert manifest(tmp_path / "again").equals(manifest(root))
    assert again.shards == first.shards


def test_resume_redoes_only_missing_shards(ludb_ds, tmp_path):
    root, clean = ludb_ds
    dest = tmp_path / "crashed"
    shutil.copytree(root, dest)
    # A crash after some shards: no manifest yet, two shards (and their parts) never written.
    lost = sorted(p.stem for p in (dest / "shards").glob("*.tar"))[2:4]
    for name in lost:
        (dest / "shards" / f"{name}.tar").unlink()
        (dest / PARTS_PREFIX / f"{name}.json").unlink()
    (dest / MANIFEST_KEY).unlink()
    (dest / QUARANTINE_KEY).unlink()
    resumed = ingest("ludb", LUDB, dest, workers=2)
    assert resumed.shards_written == 2 and resumed.shards_skipped == clean.shards - 2
    assert shard_digests(dest) == shard_digests(root)
    assert manifest(dest).equals(manifest(root))
    assert (resumed.stored, resumed.quarantined) == (clean.stored, clean.quarantined)


def test_destination_holding_another_ingest_is_refused(ludb_ds, tmp_path):
    root, _ = ludb_ds
    with pytest.raises(DestinationConflict):
        ingest("cinc2021", CINC, root)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's data")
    with pytest.raises(DestinationConflict):
        ingest("cinc2021", CINC, foreign)


def race_two_ingests(dest: str, corpus: str, source: Path, shard_bytes: int) -> None:
    """Two ingests of one corpus into one destination, both past reading the claims before
    either creates one (a barrier in the test hook): exactly one proceeds and commits a whole
    dataset; the other stops with a DestinationConflict saying so."""
    import threading

    from clef_platform.layout.dataset import open_dataset

    barrier = threading.Barrier(2, timeout=120)
    outcome: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            outcome[i] = run_ingest(IngestConfig(corpus, source, dest, shard_bytes=shard_bytes,
                                                 workers=1), before_claim=barrier.wait)
        except DestinationConflict as e:
            outcome[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    errors = [o for o in outcome.values() if isinstance(o, DestinationConflict)]
    done = [o for o in outcome.values() if not isinstance(o, DestinationConflict)]
    assert len(errors) == 1 and len(done) == 1, outcome
    assert "another ingest claimed this destination at the same moment" in str(errors[0])
    assert done[0].balanced and open_dataset(dest).digest == done[0].digest


def test_shards_run_in_the_workers_slots_never_more_at_once(ray_local, tmp_path):
    """Ray Data keeps a shard queued per worker (pipeline.worker_slots); the 4-CPU cluster
    would run 4 at once without the slots bounding them to --workers."""
    spans = tmp_path / "spans"
    spans.mkdir()

    def timed(ref):   # the default shard work, each record's start and end noted per process
        from clef_platform.ingest.pipeline import default_process

        start = time.time()
        out = default_process(ref)
        with open(spans / f"{os.getpid()}.txt", "a") as f:
            f.write(f"{start} {time.time()}\n")
        return out

    summary = run_ingest(IngestConfig("ludb", LUDB, str(tmp_path / "ds"), shard_bytes=SHARD_BYTES,
                                      workers=2, cpus_per_worker=1.0), process=timed)
    assert summary.balanced and summary.shards_written > 4
    events = sorted((float(t), step) for f in spans.iterdir() for line in f.read_text().split("\n")
                    if line for t, step in zip(line.split(), (1, -1)))
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2, f"{most} records were being processed at once with --workers 2"


def test_more_workers_than_the_cluster_can_hold_is_refused_naming_the_option(ray_local, tmp_path):
    from clef_platform.cli import UsageError

    with pytest.raises(UsageError, match=r"--workers 5 x --cpus-per-worker 1: .* has 4"):
        ingest("ludb", LUDB, tmp_path / "ds", workers=5, cpus_per_worker=1.0,
               slots_timeout_s=2.0)
    assert not (tmp_path / "ds" / MANIFEST_KEY).exists()


def test_two_ingests_racing_for_one_destination(ray_local, tmp_path):
    race_two_ingests(str(tmp_path / "raced"), "cinc2021", CINC, SHARD_BYTES)


def test_claim_of_a_live_ingest_is_respected_and_a_dead_ones_taken_over(tmp_path):
    """No Ray: the claim records its owner's host and PID; another live process's claim stops a
    second ingest, a dead process's claim is taken over (generation + 1)."""
    from clef_platform.layout.dataset import claim_destination
    from clef_platform.storage import open_store

    store = open_store(tmp_path / "ds")
    plan = {"fingerprint": "f" * 64, "corpus": "ludb", "shards": 3}
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = claim_destination(store, plan)
        first.doc["pid"] = other.pid                  # as if that process held it
        first.heartbeat()
        with pytest.raises(DestinationConflict, match=f"being written by another ingest "
                                                      f"\\(pid {other.pid}"):
            claim_destination(store, plan)
    finally:
        other.kill()
        other.wait()
    second = claim_destination(store, plan)           # its owner is gone: take over
    assert second.generation == first.generation + 1
    with pytest.raises(DestinationConflict, match="different ingest"):
        claim_destination(store, {**plan, "fingerprint": "0" * 64})
    second.release()
    assert claim_destination(store, plan).generation == 2


def test_job_quarantines_damaged_records_and_prints_balance(ray_local, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(1, 7):
        for ext in (".hea", ".dat"):
            shutil.copy(LUDB / "data" / f"{i}{ext}", src / f"{i}{ext}")
    data = (src / "2.dat").read_bytes()
    (src / "2.dat").write_bytes(data[: len(data) // 2 + 1])      # interrupted copy
    (src / "3.dat").unlink()                                      # signal file missing
    rc = load_job("ingest").main(["--corpus", "ludb", "--source", str(src), "--dest",
                           str(tmp_path / "ds"), "--shard-bytes", "300000", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "records in 6 = stored 4 + quarantined 2 (balanced)" in out
    q = {r["record_id"]: r for r in pq.read_table(tmp_path / "ds" / QUARANTINE_KEY).to_pylist()}
    assert q["2"]["reason"] == "truncated_signal_file"
    assert q["3"]["reason"] == "missing_signal_file"
    assert q["2"]["source_path"].endswith("/2") and q["2"]["detail"]
    assert sorted(manifest(tmp_path / "ds").column("record_id").to_pylist()) == ["1", "4", "5", "6"]


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("clef_ingest_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_job_counters_move_then_kill_and_resume_equals_clean(ray_local, tmp_path):
    """`python jobs/ingest.py` joins the session's Ray (RAY_ADDRESS); a scrape of its
    Prometheus endpoint shows the counters moving; it is killed mid-way; rerunning the same
    ingest completes it and equals a clean run."""
    dest, clean_dest, port = tmp_path / "killed", tmp_path / "clean", free_port()
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    log = open(tmp_path / "job.log", "wb")
    # ~1 record per shard and one writer: 50 shards, slow enough to scrape and interrupt.
    cmd = [sys.executable, str(REPO / "jobs" / "ingest.py"), "--corpus", "cinc2021",
           "--source", str(CINC), "--dest", str(dest), "--shard-bytes", "100000",
           "--workers", "1", "--metrics-port", str(port), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    stored_key = 'clef_ingest_records_total{corpus="cinc2021",outcome="stored"}'
    seen: list[float] = []
    try:
        while len(set(seen)) < 3:               # three distinct, increasing counter values
            assert proc.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            try:
                seen.append(_scrape(port).get(stored_key, 0.0))
            except OSError:
                pass                            # server not up yet
            time.sleep(0.1)
        assert not (dest / MANIFEST_KEY).exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)     # the job's own process group, by its PID
        proc.wait()
        log.close()
    assert seen == sorted(seen) and seen[-1] > 0
    assert not (dest / MANIFEST_KEY).exists()
    done_before = len(list((dest / PARTS_PREFIX).glob("*.json")))
    assert 0 < done_before < 50

    resumed = ingest("cinc2021", CINC, dest, shard_bytes=100_000, workers=2)
    clean = ingest("cinc2021", CINC, clean_dest, shard_bytes=100_000, workers=2)
    assert resumed.shards_skipped >= done_before
    assert resumed.stored == clean.stored == 50
    assert shard_digests(dest) == shard_digests(clean_dest)
    assert manifest(dest).equals(manifest(clean_dest))
