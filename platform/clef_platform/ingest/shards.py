"""WebDataset samples and deterministic shard tar files.

A stored record is one WebDataset sample of two members (no pickle anywhere):

- `<key>.meta.json`: ids, time, age, sex, labels, split, per-lead gain and baseline, lead mask,
  quality flags, original sampling rate, sha256 of the canonical signal (JSON, sorted keys)
- `<key>.signal.npy`: the canonical digital signal, int16 [12, T] little-endian (`np.save`);
  millivolts = (digital - baseline) / gain, exactly as `CanonicalRecord.millivolts()`.

Shards are plain tar files written so that the same samples give byte-identical files: samples
in increasing key order, members of a sample sorted by name, mtime 0, owner 0/0 with empty
names, mode 0444, GNU format.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from clef_model.leads import LEADS, N_LEADS
from clef_platform.ingest.record import CanonicalRecord

FORMAT_VERSION = 1
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
    }
