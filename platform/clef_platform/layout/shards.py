"""The sample and shard format (layout owner): WebDataset samples in deterministic tar files,
and the one reader of them, which verifies what it reads.

A stored record is one WebDataset sample of two members (no pickle anywhere):

- `<key>.meta.json`: ids, time, age, sex, labels, split, per-lead gain and baseline, lead mask,
  quality flags, original sampling rate, sha256 of the canonical signal, and for a window of a
  longer record its parent's id, its index, offset and the parent's digest (JSON, sorted keys)
- `<key>.signal.npy`: the canonical digital signal, int16 [12, T] little-endian (`np.save`);
  millivolts = (digital - baseline) / gain, exactly as `CanonicalRecord.millivolts()`.

Shards are plain tar files written so that the same samples give byte-identical files: samples
in increasing key order, members of a sample sorted by name, mtime 0, owner 0/0 with empty
names, mode 0444, GNU format.

Reading (`read_shard`): the whole shard is fetched while it is hashed and compared with the shard
index's SHA-256 before any record is handed out, so a damaged shard is refused (or skipped, by
the caller's policy) whole, never half-used; then its record count is checked, and optionally
each record's signal against the SHA-256 in its meta.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

import numpy as np

from clef_model.leads import LEADS, N_LEADS
from clef_platform.digests import HashingReader
from clef_platform.ingest.record import CanonicalRecord
from clef_platform.layout.errors import RecordError, ShardError

if TYPE_CHECKING:
    from clef_platform.layout.dataset import ShardInfo
    from clef_platform.storage import ObjectStore

FORMAT_VERSION = 1          # the sample format (members below); the dataset layout has its own
SIGNAL_MEMBER = "signal.npy"
META_MEMBER = "meta.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_KEY = 160


def record_key(corpus: str, record_id: str) -> str:
    """A tar-safe, dot-free sample key for a record: `[A-Za-z0-9_-]` only.

    WebDataset splits member names at the first dot, and keys come from data, so anything else
    is replaced; when that changed the text (or it was too long) a short hash of the original is
    appended so that two different ids can never collide on the same key.
    """
    raw = f"{corpus}__{record_id}"
    safe = _UNSAFE.sub("_", raw)
    if safe != raw or len(safe) > _MAX_KEY:
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:10]
        safe = f"{safe[:_MAX_KEY]}_{digest}"
    return safe


def signal_sha256(digital: np.ndarray) -> str:
    """SHA-256 of the canonical signal: int16 little-endian bytes of [12, T] in C order."""
    return hashlib.sha256(np.ascontiguousarray(digital, dtype="<i2").tobytes()).hexdigest()


def _json_default(o: Any) -> Any:
    # Labels come from corpora in many shapes; turn them into plain JSON deterministically.
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    if isinstance(o, (tuple,)):
        return list(o)
    return str(o)


def _clean_float(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default,
                      allow_nan=False, ensure_ascii=True)


@dataclass(frozen=True)
class EncodedSample:
    key: str
    members: dict[str, bytes]      # member suffix -> bytes
    meta: dict[str, Any]           # what went into meta.json (for the manifest row)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.members.values())


def encode_record(rec: CanonicalRecord, split: str) -> EncodedSample:
    digital = np.asarray(rec.digital)
    if digital.dtype != np.int16 or digital.ndim != 2 or digital.shape[0] != N_LEADS:
        raise ValueError(f"canonical signal must be int16 [{N_LEADS}, T], got "
                         f"{digital.dtype} {digital.shape}")
    digital = np.ascontiguousarray(digital, dtype="<i2")
    ref = rec.ref
    key = record_key(ref.corpus, ref.record_id)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "corpus": ref.corpus,
        "record_id": ref.record_id,
        "patient_id": ref.patient_id,
        "ecg_time": ref.ecg_time or "",
        "age": _clean_float(ref.age),
        "sex": ref.sex,
        "split": split,
        "native_ids": dict(ref.native_ids),
        "labels": dict(ref.labels),
        "leads": list(LEADS),
        "n_samples": int(digital.shape[1]),
        "fs": 500.0,
        "fs_original": float(rec.fs_original),
        "gain": [float(g) for g in np.asarray(rec.gain, dtype=np.float32)],
        "baseline": [float(b) for b in np.asarray(rec.baseline, dtype=np.float32)],
        "lead_mask": [bool(m) for m in np.asarray(rec.lead_mask, dtype=bool)],
        "quality_flags": {k: list(v) for k, v in sorted(rec.quality_flags.items())},
        "sha256": signal_sha256(digital),
    }
    if ref.window:
        # a window of a longer record: its parent and where in it (ingest.windows); whole
        # records carry no such key, so their samples are what they were before windows
        w = ref.window
        meta["window"] = {"parent_record_id": w["parent_record_id"], "index": int(w["index"]),
                          "start_s": float(w["start"]) / float(w["fs"]),
                          "parent_sha256": w["parent_sha256"]}
    buf = io.BytesIO()
    np.save(buf, digital, allow_pickle=False)
    meta_bytes = dumps_json(meta).encode("ascii")
    # Round-trip through JSON so the manifest sees exactly what the shard holds.
    return EncodedSample(key, {SIGNAL_MEMBER: buf.getvalue(), META_MEMBER: meta_bytes},
                         json.loads(meta_bytes))


class ShardTarWriter:
    """Writes samples into a tar stream deterministically; keys must arrive in sorted order."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT)
        self._last_key: str | None = None
        self.count = 0

    def add(self, sample: EncodedSample) -> None:
        if self._last_key is not None and sample.key <= self._last_key:
            raise ValueError(f"samples must be added in increasing key order: "
                             f"{sample.key!r} after {self._last_key!r}")
        for suffix in sorted(sample.members):
            data = sample.members[suffix]
            info = tarfile.TarInfo(f"{sample.key}.{suffix}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            self._tar.addfile(info, io.BytesIO(data))
        self._last_key = sample.key
        self.count += 1

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> "ShardTarWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """WebDataset raw sample (member suffix -> bytes) -> the canonical record dict.

    Safe decoding only: `np.load(allow_pickle=False)` and `json.loads`; members other than ours
    are ignored, never interpreted.
    """
    return _decode(sample)[0]


def _decode(sample: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    meta_raw = sample[META_MEMBER]
    meta = json.loads(meta_raw if isinstance(meta_raw, (str, bytes)) else bytes(meta_raw))
    sig_raw = sample[SIGNAL_MEMBER]
    if isinstance(sig_raw, np.ndarray) and sig_raw.dtype != np.uint8:
        digital = sig_raw     # already decoded by a reader that knows .npy (Ray Data)
    else:
        digital = np.load(io.BytesIO(bytes(sig_raw)), allow_pickle=False)
    if digital.dtype != np.int16 or digital.shape != (N_LEADS, meta["n_samples"]):
        raise ValueError(f"bad signal member for {meta.get('key')!r}: "
                         f"{digital.dtype} {digital.shape}")
    gain = np.asarray(meta["gain"], dtype=np.float32)
    baseline = np.asarray(meta["baseline"], dtype=np.float32)
    signal = ((digital.astype(np.float32) - baseline[:, None]) / gain[:, None]).astype(np.float32)
    rest = {k: v for k, v in meta.items()
            if k not in ("key", "record_id", "patient_id", "corpus", "ecg_time", "split",
                         "lead_mask")}
    return {
        "key": meta["key"],
        "record_id": meta["record_id"],
        "patient_id": meta["patient_id"],
        "corpus": meta["corpus"],
        "ecg_time": meta["ecg_time"],
        "split": meta["split"],
        "signal": signal,
        "lead_mask": np.asarray(meta["lead_mask"], dtype=bool),
        "meta": rest,
    }, digital


# ------------------------------------------------------------------------------- reading

_SPOOL_BYTES = 64 * 1024 * 1024     # shards up to this size are verified in memory


def fetch_verified(store: "ObjectStore", info: "ShardInfo") -> BinaryIO:
    """The shard's bytes (a file object at offset 0) after checking size and SHA-256 against the
    shard index; a mismatch raises ShardError naming the shard. Local shards are hashed in place
    and reopened (page cache); remote ones are spooled to memory or a temp file once."""
    from clef_platform.storage import LocalStore

    if isinstance(store, LocalStore):
        src = HashingReader(store.open(info.key))
        try:
            while src.read(1 << 20):
                pass
        except OSError as e:
            raise ShardError(info.name, f"unreadable ({e})") from None
        finally:
            src.close()
        _check_digest(info, src)
        return store.open(info.key)
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
    src = HashingReader(store.open(info.key))
    try:
        shutil.copyfileobj(src, spool, 1 << 20)
    finally:
        src.close()
    _check_digest(info, src)
    spool.seek(0)
    return spool


def _check_digest(info: "ShardInfo", src: HashingReader) -> None:
    if src.nbytes != info.nbytes:
        raise ShardError(info.name, f"{src.nbytes} bytes, the shard index says {info.nbytes} "
                                    f"(truncated or replaced)")
    if src.hexdigest() != info.sha256:
        raise ShardError(info.name, "SHA-256 differs from the shard index (bytes changed "
                                    "after ingest)")


def iter_raw_samples(f: BinaryIO, shard: str) -> Iterator[dict[str, Any]]:
    """{member suffix: bytes, "__key__": key} per sample of a tar stream, in stored order."""
    current: str | None = None
    sample: dict[str, Any] = {}
    try:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                skey, _, suffix = PurePosixPath(member.name).name.partition(".")
                if current is not None and skey != current:
                    yield sample
                    sample = {}
                current = skey
                sample["__key__"] = skey
                sample[suffix] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(shard, f"not a readable tar ({type(e).__name__}: {e})") from None
    if sample:
        yield sample


def check_record(rec: dict[str, Any], digital: np.ndarray, shard: str) -> None:
    """The record's signal against the SHA-256 its meta (and the manifest) recorded."""
    if signal_sha256(digital) != rec["meta"].get("sha256"):
        raise RecordError(shard, rec["key"], "signal SHA-256 differs from the manifest's")


def read_shard(store: "ObjectStore", info: "ShardInfo", *, verify_shard: bool = True,
               verify_records: bool = False,
               on_bad_record: "Callable[[RecordError], None] | None" = None,
               ) -> Iterator[dict[str, Any]]:
    """Canonical record dicts of one shard in stored order, verified as asked.

    verify_shard: size and SHA-256 of the whole shard before any record is yielded, and its
    record count at the end. verify_records: each record's signal SHA-256 (costs one hash of
    the signal per record). A bad record raises RecordError, or, with `on_bad_record`, is
    reported to it and left out (the count check then allows for it)."""
    f = fetch_verified(store, info) if verify_shard else store.open(info.key)
    n = 0
    try:
        for raw in iter_raw_samples(f, info.name):
            try:
                rec, digital = _decode(raw)
            except (KeyError, ValueError) as e:
                raise RecordError(info.name, raw.get("__key__", "?"), f"undecodable ({e})") \
                    from None
            if rec["key"] != raw["__key__"]:
                raise RecordError(info.name, raw["__key__"], f"meta names key {rec['key']!r}")
            n += 1
            if verify_records:
                try:
                    check_record(rec, digital, info.name)
                except RecordError as e:
                    if on_bad_record is None:
                        raise
                    on_bad_record(e)
                    continue
            yield rec
    finally:
        f.close()
    if verify_shard and n != info.records:
        raise ShardError(info.name, f"{n} records, the shard index says {info.records}")
