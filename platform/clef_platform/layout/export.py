"""The run layout's exports (schema version 2): encoder exports that evaluators read.

Under a run `<storage>/<run-name>/` (the same folder Ray Train writes its checkpoints into):

    exports/step_<N>/<attempt>/encoder.safetensors, config.json   one attempt's files
    exports/step_<N>/_COMPLETE                                     the marker (JSON, below)

An attempt is a fresh folder per write (`a-<hex>`). The marker is created only if absent, and
names the attempt it commits and the SHA-256 of each of its files; once it exists the export
never changes: a replayed step (a worker restart) finds it and leaves it alone, and a losing
concurrent writer removes its own attempt. Readers resolve an export through its marker and
verify every file before loading, so they never see files of two attempts, or damaged ones.

The marker is a typed record (`ExportMarker`) written by training: step, method, scale, recipe,
config digest, created time, the training data (one `TrainingData` per dataset), and the files.
Its `digest` (SHA-256 of the sorted file digests) names the weights: evaluation results are
keyed by it.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clef_platform.digests import sha256_bytes, sha256_file, stable_hash
from clef_platform.layout.errors import ExportError
from clef_platform.storage import open_store

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
EXPORTS_PREFIX = "exports/"
MARKER = "_COMPLETE"
_MARKER_RE = re.compile(r"^exports/step_(\d+)/" + MARKER + "$")


def run_url(storage: str, run_name: str) -> str:
    return f"{str(storage).rstrip('/')}/{run_name}"


def step_prefix(step: int) -> str:
    """The export of `step`, relative to the run."""
    return f"{EXPORTS_PREFIX}step_{step:d}"


def export_url(run: str, step: int) -> str:
    return f"{run.rstrip('/')}/{step_prefix(step)}"


@dataclass(frozen=True)
class TrainingData:
    """One dataset a run trained on (lineage: evaluation excludes these records)."""

    url: str
    split: str
    dataset_digest: str
    records: int
    weight: float = 1.0


@dataclass(frozen=True)
class ExportMarker:
    step: int
    run_name: str
    method: str
    scale: str
    recipe: str
    config_digest: str
    training_data: tuple[TrainingData, ...]
    attempt: str
    files: dict[str, str]                 # file name -> SHA-256
    loss: float | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    schema_version: int = SCHEMA_VERSION

    @property
    def digest(self) -> str:
        """Names the exported weights (the files' digests), whatever the attempt or time."""
        return stable_hash(sorted(self.files.items()), length=64)

    def to_json(self) -> bytes:
        d = asdict(self)
        d["training_data"] = [asdict(t) for t in self.training_data]
        return json.dumps(d, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "ExportMarker":
        try:
            d = json.loads(data)
            if d.get("schema_version") != SCHEMA_VERSION:
                raise ExportError(f"{where}: export schema version {d.get('schema_version')}, "
                                  f"this platform reads {SCHEMA_VERSION}")
            d["training_data"] = tuple(TrainingData(**t) for t in d["training_data"])
            return cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            if isinstance(e, ExportError):
                raise
            raise ExportError(f"{where}: not an export marker ({type(e).__name__}: {e})") \
                from None


def write_export(local_dir: Path, storage: str, run_name: str, step: int,
                 **marker_fields: Any) -> tuple[str, bool]:
    """Commit the files of `local_dir` as the export of `step`, unless one is committed.

    Returns (export URL, created): created is False when the step already had an export (a
    replayed step), which is then left exactly as it was."""
    store = open_store(run_url(storage, run_name))
    prefix = step_prefix(step)
    marker_key = f"{prefix}/{MARKER}"
    if store.exists(marker_key):
        log.info("export of step %d already committed; leaving it unchanged", step)
        return export_url(store.url, step), False
    attempt = f"a-{uuid.uuid4().hex[:12]}"
    files = {}
    for f in sorted(Path(local_dir).iterdir()):
        files[f.name] = sha256_file(f)
        store.put_file(f"{prefix}/{attempt}/{f.name}", f)
    marker = ExportMarker(step=step, run_name=run_name, attempt=attempt, files=files,
                          **marker_fields)
    if not store.put_bytes_if_absent(marker_key, marker.to_json()):
        log.info("export of step %d was committed concurrently; removing attempt %s", step,
                 attempt)
        for name in files:
            store.delete(f"{prefix}/{attempt}/{name}")
        return export_url(store.url, step), False
    return export_url(store.url, step), True


def read_marker(export: str) -> ExportMarker:
    """The marker of an export URL (`<run>/exports/step_<N>`)."""
    store = open_store(export)
    if not store.exists(MARKER):
        raise ExportError(f"{export}: no {MARKER} marker (export not committed)")
    return ExportMarker.from_json(store.get_bytes(MARKER), f"{export}/{MARKER}")


def fetch_export(export: str, dest: Path) -> ExportMarker:
    """Copy an export's files into `dest`, verified against its marker; returns the marker."""
    marker = read_marker(export)
    store = open_store(export)
    dest.mkdir(parents=True, exist_ok=True)
    for name, sha in sorted(marker.files.items()):
        key = f"{marker.attempt}/{name}"
        if not store.exists(key):
            raise ExportError(f"{export}: file {key} named by the marker is missing")
        data = store.get_bytes(key)
        if sha256_bytes(data) != sha:
            raise ExportError(f"{export}: file {key} differs from its SHA-256 in the marker")
        (dest / name).write_bytes(data)
    return marker


def load_export(export: str):
    """The encoder of an export (a Net1D in eval mode, CPU), verified before loading."""
    from clef_model import load_encoder

    with tempfile.TemporaryDirectory(prefix="clef-export-") as d:
        fetch_export(export, Path(d))
        return load_encoder(d)


def list_exports(run: str) -> dict[int, str]:
    """{step: export URL} of the run's committed exports, by step."""
    store = open_store(run)
    out = {}
    for key in store.list(EXPORTS_PREFIX):
        m = _MARKER_RE.match(key)
        if m:
            out[int(m.group(1))] = export_url(store.url, int(m.group(1)))
    return dict(sorted(out.items()))
