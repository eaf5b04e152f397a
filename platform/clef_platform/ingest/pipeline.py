"""The ingestion pipeline: list -> plan shards -> (Ray Data) read, validate, encode, write.

Determinism and resume come from planning before any signal is read:

1. The driver lists `RecordRef`s (small: ids and paths, never signals) and gives each record a
   key, a split (stable hash of its patient id) and a shard: within a split, records sorted by
   key are cut into runs of `records_per_shard`. That number comes from the encoded size of a
   fixed probe (the first records by key), so the same corpus and settings always give the same
   plan, whatever the parallelism.
2. Ray Data maps over the planned shards that have no part file yet, in the workers' reserved
   slots (`worker_slots`: `workers` shards at once, two more queued per worker): each task reads
   and validates its records (`process_record`), encodes them and streams them into the store's
   writer for the shard, which commits it whole, then writes its part (manifest + quarantine
   rows).
3. The driver assembles the parts into the shard index, quarantine.parquet and then
   manifest.parquet (last: the commit; clef_platform.layout.dataset owns the layout). After a
   crash, rerunning the same command skips shards whose part exists.

The destination is claimed first (`layout.dataset.claim_destination`): of two ingests into one
destination at once, one proceeds and the other stops with a DestinationConflict.

Records the plan puts in a shard but validation rejects simply leave that shard a little
smaller than planned; they never move other records, which keeps the plan stable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from clef_platform import mirror
from clef_platform.digests import HashingWriter
from clef_platform.ingest.record import CanonicalRecord, Quarantined, RecordRef
from clef_platform.ingest.splits import SplitRatios, assign_split
from clef_platform.layout import dataset as mf
from clef_platform.layout.dataset import DestinationConflict, ShardInfo, shard_key, shard_name  # noqa: F401 (re-exported)
from clef_platform.layout.shards import FORMAT_VERSION, ShardTarWriter, encode_record, record_key
from clef_platform.storage import ObjectStore, open_store

log = logging.getLogger(__name__)

ProcessFn = Callable[[RecordRef], "CanonicalRecord | Quarantined"]
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
_FALLBACK_RECORD_BYTES = 12 * 5000 * 2 + 2048   # a 10 s, 500 Hz record, if the probe fails


@dataclass(frozen=True)
class IngestConfig:
    corpus: str
    source: str | Path              # a folder, or a URL of one (s3://...; see clef_platform.mirror)
    dest: str
    shard_bytes: int = DEFAULT_SHARD_BYTES
    split_ratios: SplitRatios = field(default_factory=SplitRatios)
    workers: int = 2                 # concurrent shard-writing tasks
    cpus_per_worker: float = 1.0     # fractional values let ingest share a small machine
    probe_records: int = 16
    slots_timeout_s: float = 300.0   # how long to wait for the cluster to free the workers' CPUs
    metrics: str = "ray"             # ray: shard tasks report through ray.util.metrics; off

    def __post_init__(self) -> None:
        if self.metrics not in ("ray", "off"):
            raise ValueError(f"metrics must be 'ray' or 'off', got {self.metrics!r}")
        if self.shard_bytes < 1024:
            raise ValueError(f"shard_bytes must be >= 1024, got {self.shard_bytes}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 < self.cpus_per_worker <= 64:
            raise ValueError(f"cpus_per_worker must be in (0, 64], got {self.cpus_per_worker}")
        if self.slots_timeout_s <= 0:
            raise ValueError(f"slots_timeout_s must be > 0, got {self.slots_timeout_s}")
        if self.probe_records < 1:
            raise ValueError("probe_records must be >= 1")


@dataclass(frozen=True)
class ShardPlan:
    name: str                  # "<split>-<NNNNNN>", also the tar's base name
    split: str
    keys: tuple[str, ...]
    refs: tuple[RecordRef, ...]

    @property
    def object_key(self) -> str:
        return shard_key(self.name)


@dataclass
class ShardResult:
    name: str
    stored: int
    quarantined: int
    nbytes: int
    reasons: dict[str, int]
    skipped: bool = False      # already complete from an earlier run


@dataclass
class IngestSummary:
    records_in: int = 0
    stored: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    shards: int = 0                 # shards holding at least one record
    shards_written: int = 0         # written by this run
    shards_skipped: int = 0         # already complete (resume)
    bytes: int = 0
    seconds: float = 0.0
    records_per_s: float = 0.0
    records_per_shard: int = 0
    digest: str = ""                # the committed dataset's digest (layout.dataset)

    @property
    def balanced(self) -> bool:
        return self.records_in == self.stored + self.quarantined

    def lines(self) -> list[str]:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined_by_reason.items()))
        return [
            f"records in {self.records_in} = stored {self.stored} + quarantined "
            f"{self.quarantined} ({'balanced' if self.balanced else 'UNBALANCED'})",
            f"quarantined by reason: {reasons or 'none'}",
            f"shards {self.shards} (written {self.shards_written}, already complete "
            f"{self.shards_skipped}), {self.records_per_shard} records/shard planned, "
            f"{self.bytes} bytes ({self.bytes / 2**20:.1f} MiB)",
            f"{self.seconds:.1f} s, {self.records_per_s:.1f} records/s",
            f"dataset digest {self.digest}",
        ]


# ---------------------------------------------------------------- refs <-> JSON (for Ray rows)

def ref_to_json(ref: RecordRef) -> str:
    from clef_platform.layout.shards import dumps_json
    # One level only: asdict deep-copies every nested dict, 3x the time (0.2 s of driver time
    # per 8,000 records while the workers waited for their first shard).
    return dumps_json({f.name: getattr(ref, f.name) for f in fields(ref)})


def ref_from_json(text: str) -> RecordRef:
    return RecordRef(**json.loads(text))


# ------------------------------------------------------------------------- default callables

def default_list_refs(corpus: str, source: Path) -> Iterator[RecordRef]:
    from clef_platform.ingest.adapters import get_adapter
    return get_adapter(corpus).list_records(Path(source))


def default_process(ref: RecordRef) -> "CanonicalRecord | Quarantined":
    from clef_platform.ingest.canonical import process_record
    return process_record(ref)


def _safe_process(process: ProcessFn, ref: RecordRef) -> "CanonicalRecord | Quarantined":
    # process_record should never raise; if it does, the record is quarantined, not the job.
    try:
        return process(ref)
    except Exception as e:  # noqa: BLE001 - one bad record must not stop the corpus
        log.exception("process_record raised for %s", ref.source_path)
        return Quarantined(ref, "read_error", f"{type(e).__name__}: {e}")


def _quarantine_row(q: Quarantined, shard: str) -> dict[str, Any]:
    return {"corpus": q.ref.corpus, "record_id": q.ref.record_id,
            "patient_id": q.ref.patient_id, "source_path": q.ref.source_path,
            "reason": q.reason, "detail": q.detail, "shard": shard}


# -------------------------------------------------------------------------------- planning

def plan_shards(refs: Iterable[RecordRef], ratios: SplitRatios, records_per_shard: int,
                ) -> tuple[list[ShardPlan], list[Quarantined]]:
    """Deterministic shard plan; refs whose key repeats an earlier one are rejected."""
    by_key: dict[str, RecordRef] = {}
    duplicates: list[Quarantined] = []
    for ref in sorted(refs, key=lambda r: (record_key(r.corpus, r.record_id), r.source_path)):
        key = record_key(ref.corpus, ref.record_id)
        if key in by_key:
            duplicates.append(Quarantined(
                ref, "bad_reference",
                f"duplicate record id {ref.record_id!r} (key {key}); also listed at "
                f"{by_key[key].source_path}: keep one and fix the listing"))
            continue
        by_key[key] = ref
    per_split: dict[str, list[tuple[str, RecordRef]]] = {n: [] for n in ratios.names}
    for key in sorted(by_key):
        ref = by_key[key]
        per_split[assign_split(ref.patient_id, ratios)].append((key, ref))
    plans = []
    for split in ratios.names:
        items = per_split[split]
        for i, start in enumerate(range(0, len(items), records_per_shard)):
            chunk = items[start:start + records_per_shard]
            plans.append(ShardPlan(shard_name(split, i), split, tuple(k for k, _ in chunk),
                                   tuple(r for _, r in chunk)))
    return plans, duplicates


def plan_fingerprint(cfg: IngestConfig, plans: list[ShardPlan], records_per_shard: int) -> str:
    h = hashlib.sha256()
    head = {"format_version": FORMAT_VERSION, "corpus": cfg.corpus,
            "ratios": cfg.split_ratios.to_text(), "records_per_shard": records_per_shard}
    h.update(json.dumps(head, sort_keys=True).encode())
    for p in plans:
        h.update(p.name.encode() + b"\0" + "\0".join(p.keys).encode() + b"\n")
    return h.hexdigest()


def _probe_bytes(refs_json: list[str], process: ProcessFn) -> list[int]:
    """Encoded sizes of a few records (runs in a Ray task: the driver never reads signals)."""
    sizes = []
    for text in refs_json:
        out = _safe_process(process, ref_from_json(text))
        if isinstance(out, CanonicalRecord):
            sizes.append(encode_record(out, "probe").nbytes + 1024)   # + tar headers
    return sizes


def records_per_shard_for(refs: list[RecordRef], cfg: IngestConfig, process: ProcessFn,
                          slots: "Slots | None" = None) -> int:
    """Records per shard from the encoded size of the first `cfg.probe_records` records. In
    slots, the probe is split over every slot, so each worker has imported the readers and
    warmed up before its first shard (else one started 1.5 s late, seen on 2 cores)."""
    import ray

    probe = sorted(refs, key=lambda r: record_key(r.corpus, r.record_id))[:cfg.probe_records]
    parts = [probe[i::slots.count] for i in range(slots.count)] if slots else [probe]
    sizes = ray.get([
        ray.remote(num_cpus=cfg.cpus_per_worker,
                   scheduling_strategy=slots.at(i) if slots else None)(_probe_bytes)
        .remote([ref_to_json(r) for r in part], process)
        for i, part in enumerate(parts) if part])
    sizes = [n for part in sizes for n in part]
    per_record = sum(sizes) / len(sizes) if sizes else _FALLBACK_RECORD_BYTES
    return max(1, int(cfg.shard_bytes // per_record))


# ------------------------------------------------------------------------ the shard task

def write_shard(name: str, split: str, refs_json: str, dest: str,
                process: ProcessFn = default_process, source: str | None = None) -> ShardResult:
    """Read, validate and encode one planned shard's records and store the shard and its part.

    Memory stays at about one record: samples stream into the store's writer for the shard
    (hashed as written), which commits it whole once the last record is in; a shard whose
    records were all quarantined is not stored. The part (rows for the manifest) is written
    after the shard.
    """
    if source is not None and mirror.is_remote(source):
        mirror.mirror(source)   # this host's copy of the corpus, at the path the plan names
    store = open_store(dest)
    refs = [ref_from_json(t) for t in json.loads(refs_json)]
    stored_rows: list[dict[str, Any]] = []
    quarantined_rows: list[dict[str, Any]] = []
    with ExitStack() as shard:
        tar: ShardTarWriter | None = None
        for ref in refs:   # planned in key order, so the tar comes out sorted
            out = _safe_process(process, ref)
            if isinstance(out, Quarantined):
                quarantined_rows.append(_quarantine_row(out, name))
                continue
            if tar is None:   # opened at the first stored record
                hashed = HashingWriter(shard.enter_context(store.writer(shard_key(name))))
                tar = shard.enter_context(ShardTarWriter(hashed))
            sample = encode_record(out, split)
            tar.add(sample)
            stored_rows.append(mf.manifest_row(sample.meta, name, out.source_sha256))
    nbytes, sha = (hashed.nbytes, hashed.hexdigest()) if stored_rows else (0, "")
    mf.write_part(store, ShardInfo(name, split, len(stored_rows), nbytes, sha), stored_rows,
                  quarantined_rows)
    reasons = Counter(r["reason"] for r in quarantined_rows)
    return ShardResult(name, len(stored_rows), len(quarantined_rows), nbytes, dict(reasons))


_SINK = None   # one Ray sink per worker process (each metric registers once)


def _ray_sink():
    global _SINK
    if _SINK is None:
        from clef_platform.monitoring.sink import RaySink

        _SINK = RaySink()
    return _SINK


def _write_shard_row(row: dict[str, Any], process: ProcessFn, dest: str,
                     source: str | None = None, corpus: str = "",
                     metrics: str = "off") -> dict[str, Any]:
    r = write_shard(row["name"], row["split"], row["refs"], dest, process, source)
    if metrics == "ray":   # from the task itself: Ray's metrics agent on this node exports it
        from clef_platform.metrics import record_shard

        record_shard(_ray_sink(), corpus, r.stored, r.reasons, r.nbytes, False)
    return {"name": r.name, "stored": r.stored, "quarantined": r.quarantined,
            "nbytes": r.nbytes, "reasons": json.dumps(r.reasons, sort_keys=True)}


@dataclass(frozen=True)
class Slots:
    """The ingest's reserved worker slots (a Ray placement group of `count` bundles)."""
    group: Any
    count: int

    def any(self) -> Any:
        """The scheduling strategy that runs a task in whichever slot is free."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(self.group)

    def at(self, i: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i)


# Shards submitted per worker slot. With two, a worker still sat idle 20-160 ms between shards
# now and then, and for up to a shard's time at the end (Ray timeline, 2 workers on 2 cores);
# with three, gaps were 4-13 ms (one of 33 ms) in three timelines. Queued shards hold only
# their record list.
_SUBMITTED_PER_WORKER = 3


@contextmanager
def worker_slots(cfg: IngestConfig) -> Iterator[Slots]:
    """`cfg.workers` slots of `cfg.cpus_per_worker` CPUs (a Ray placement group, spread over
    the hosts), held for the ingest's tasks. A cluster that cannot free them within
    `cfg.slots_timeout_s` is a usage error.

    Why slots: Ray Data's scheduling loop notices a finished task only on its next turn (it
    waits up to 0.1 s for all running tasks at once), so with every worker busy each shard
    left its worker idle for 0.1-0.25 s, a fifth of a 0.5 s shard. With the slots bounding the
    shards running at once, Ray Data can keep more shards submitted than run, which Ray's
    scheduler starts the moment a slot frees.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": cfg.cpus_per_worker}] * cfg.workers, strategy="SPREAD")
    try:
        ready, _ = ray.wait([group.ready()], timeout=cfg.slots_timeout_s)
        if not ready:
            from clef_platform.cli import UsageError

            raise UsageError(
                f"--workers {cfg.workers} x --cpus-per-worker {cfg.cpus_per_worker:g}: the Ray "
                f"cluster did not free {cfg.workers * cfg.cpus_per_worker:g} CPUs in "
                f"{cfg.slots_timeout_s:g} s (it has {ray.cluster_resources().get('CPU', 0):g}); "
                "ask for fewer workers or CPUs per worker")
        yield Slots(group, cfg.workers)
    finally:
        remove_placement_group(group)


def _write_shards(cfg: IngestConfig, todo: list[ShardPlan], process: ProcessFn,
                  slots: Slots) -> Iterator[dict[str, Any]]:
    """Ray Data maps the shard task over the planned shards (one block each) in the workers'
    slots, up to three per worker submitted; yields each shard's result row as it completes.
    Largest shards go first, so the last ones to finish are small."""
    import ray
    from ray.util.annotations import RayDeprecationWarning

    rows = [{"name": p.name, "split": p.split,
             "refs": json.dumps([ref_to_json(r) for r in p.refs])}
            for p in sorted(todo, key=lambda p: -len(p.refs))]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # The slots bound the shards at once; Ray Data's own reservation would hold half of them
    # back at the start (seen: the second worker idle for the first 1-2 s).
    ds.context.op_resource_reservation_enabled = False
    with warnings.catch_warnings():
        # Ray 2.60 (pinned) takes a task's placement only as a ray.remote argument, which it
        # flags for removal in 2.64 without a named replacement yet: revisit when upgrading.
        warnings.filterwarnings("ignore", category=RayDeprecationWarning)
        ds = ds.map(_write_shard_row,
                    fn_kwargs={"process": process, "dest": cfg.dest,
                               "source": str(cfg.source), "corpus": cfg.corpus,
                               "metrics": cfg.metrics},
                    num_cpus=cfg.cpus_per_worker, scheduling_strategy=slots.any(),
                    compute=ray.data.TaskPoolStrategy(size=min(_SUBMITTED_PER_WORKER * cfg.workers,
                                                                len(rows))))
    yield from ds.iter_rows()


# ------------------------------------------------------------------------------ the driver

ProgressFn = Callable[[ShardResult], None]


def run_ingest(cfg: IngestConfig, *,
               list_refs: Callable[[str, Path], Iterable[RecordRef]] = default_list_refs,
               process: ProcessFn = default_process,
               on_plan: Callable[[int], None] | None = None,
               on_shard: ProgressFn | None = None,
               before_claim: Callable[[], None] | None = None) -> IngestSummary:
    """Ingest `cfg.source` into `cfg.dest`; resumable. Ray must already be initialised.

    `on_plan(n_shards)` is called once the plan is known, `on_shard(result)` per shard as it
    completes (or is found complete from an earlier run): hooks for progress and metrics.
    `before_claim` is a test hook run between reading and creating the destination's claim.
    """
    t0 = time.perf_counter()
    store = open_store(cfg.dest)
    # Absolute paths: Ray workers (and `ray job submit` entrypoints) may run elsewhere. A corpus
    # in object storage is listed from this host's mirror; shard tasks mirror it on theirs.
    refs = list(list_refs(cfg.corpus, mirror.mirror(cfg.source).resolve()))
    log.info("listed %d records of corpus %s from %s", len(refs), cfg.corpus, cfg.source)
    if not refs:
        # Refused, never committed: an empty dataset looks like a successful ingest downstream.
        from clef_platform.cli import UsageError

        raise UsageError(f"--source {cfg.source}: no {cfg.corpus} records found (an empty "
                         "folder, or not this corpus's layout); nothing was written")

    with worker_slots(cfg) as slots:
        rps = records_per_shard_for(refs, cfg, process, slots)
        plans, duplicates = plan_shards(refs, cfg.split_ratios, rps)
        fingerprint = plan_fingerprint(cfg, plans, rps)
        claim = mf.claim_destination(store, {
            "fingerprint": fingerprint, "corpus": cfg.corpus, "shards": len(plans),
            "records": len(refs), "records_per_shard": rps, "shard_bytes": cfg.shard_bytes,
            "split_ratios": cfg.split_ratios.to_text(), "format_version": FORMAT_VERSION},
            before_create=before_claim).hold()
        try:
            return _ingest_claimed(cfg, store, plans, duplicates, rps, process, slots,
                                   on_plan, on_shard, t0)
        finally:
            claim.release()


def _ingest_claimed(cfg: IngestConfig, store: ObjectStore, plans: list[ShardPlan],
                    duplicates: list[Quarantined], rps: int, process: ProcessFn, slots: Slots,
                    on_plan: Callable[[int], None] | None, on_shard: ProgressFn | None,
                    t0: float) -> IngestSummary:

    refs_in = sum(len(p.refs) for p in plans) + len(duplicates)
    done = mf.finished_parts(store)
    todo = [p for p in plans if p.name not in done]
    log.info("%d shards planned (%d records/shard), %d already complete, %d to write",
             len(plans), rps, len(plans) - len(todo), len(todo))
    summary = IngestSummary(records_in=refs_in, records_per_shard=rps)
    if on_plan:
        on_plan(len(plans))
    if cfg.metrics == "ray":   # what the driver itself decided: duplicates, finished shards
        from clef_platform.metrics import record_shard

        for reason, n in Counter(q.reason for q in duplicates).items():
            _ray_sink().inc("clef_ingest_records_total", n, corpus=cfg.corpus,
                            outcome="quarantined")
            _ray_sink().inc("clef_ingest_quarantined_total", n, corpus=cfg.corpus, reason=reason)
        for _ in range(len(plans) - len(todo)):
            record_shard(_ray_sink(), cfg.corpus, 0, {}, 0, True)
    for p in plans:
        if p.name in done:
            summary.shards_skipped += 1
            if on_shard:
                on_shard(ShardResult(p.name, 0, 0, 0, {}, skipped=True))

    if todo:
        for out in _write_shards(cfg, todo, process, slots):
            res = ShardResult(out["name"], int(out["stored"]), int(out["quarantined"]),
                              int(out["nbytes"]), json.loads(out["reasons"]))
            summary.shards_written += 1
            if on_shard:
                on_shard(res)

    # Assemble from the parts (this run's and earlier runs'), in plan order.
    stored_rows: list[dict[str, Any]] = []
    quarantined_rows = [_quarantine_row(q, "") for q in duplicates]
    shards = []
    for p in plans:
        info, s_rows, q_rows = mf.read_part(store, p.name)
        stored_rows += s_rows
        quarantined_rows += q_rows
        shards.append(info)
        summary.bytes += info.nbytes
        summary.shards += 1 if s_rows else 0
    summary.digest = mf.commit_dataset(store, mf.manifest_table(stored_rows),
                                       mf.quarantine_table(quarantined_rows), shards)

    summary.stored = len(stored_rows)
    summary.quarantined = len(quarantined_rows)
    summary.quarantined_by_reason = dict(Counter(r["reason"] for r in quarantined_rows))
    summary.seconds = time.perf_counter() - t0
    summary.records_per_s = summary.records_in / summary.seconds if summary.seconds else 0.0
    if not summary.balanced:   # a bug, never data: say it loudly
        log.error("record balance broken: %s", summary.lines()[0])
    return summary
