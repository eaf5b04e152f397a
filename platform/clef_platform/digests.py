"""Digests, the one place the platform hashes things.

- `sha256_bytes` / `sha256_file` / `HashingReader` / `HashingWriter`: content digests of what
  is stored (shards, export files, checkpoint files); hex SHA-256.
- `stable_hash(*parts)`: a short, process- and machine-independent name for a value (config
  hashes, seeds); never Python's `hash()`, which is salted per process.
- `stable_int(*parts)`: the same as a 64-bit integer (RNG seeds).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_stream(f: BinaryIO) -> tuple[str, int]:
    """(hex digest, bytes read) of everything left in `f`."""
    h = hashlib.sha256()
    n = 0
    for chunk in iter(lambda: f.read(CHUNK), b""):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


class HashingReader:
    """A read-only stream that hashes what passes through it (digest checked by the caller)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._h = hashlib.sha256()
        self.nbytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self._h.update(data)
        self.nbytes += len(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def close(self) -> None:
        self.raw.close()


class HashingWriter:
    """A write-only stream that hashes and counts what passes through it, so a file is hashed
    as it is written rather than read back (tarfile also asks it for `tell()`)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self._h = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self._h.update(data)
        self.nbytes += len(data)
        return len(data)

    def tell(self) -> int:
        return self.nbytes

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _canonical(parts: tuple[Any, ...]) -> bytes:
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A hex digest of `parts` (JSON-serialisable values; others by str) of `length` chars."""
    return hashlib.sha256(_canonical(parts)).hexdigest()[:length]


def stable_int(*parts: Any) -> int:
    """A 64-bit unsigned integer from `parts` (seeds for RNGs)."""
    return int.from_bytes(hashlib.sha256(_canonical(parts)).digest()[:8], "big")
