"""Small real-data setups for tests, benchmarks and the demo: bundled corpora (or a subset of
their records) ingested with the platform's own ingestion, and encoder exports laid out as the
training job writes them (`<run>/exports/step_<N>/` + `_COMPLETE`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[3]
BUNDLED = {"ludb": REPO / "data" / "ludb" / "data", "cinc2021": REPO / "data" / "cinc2021-sample"}


def subset_folder(source: Path, dest: Path, names: Iterable[str]) -> Path:
    """A folder of symlinks to the WFDB files (header + signal) of the named records."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        for f in Path(source).glob(f"{name}.*"):
            link = dest / f.name
            if not link.exists():
                os.symlink(f.resolve(), link)
    return dest


def ingest(corpus: str, source: Path, dest: str, shard_bytes: int = 2_000_000,
           cpus_per_worker: float = 0.5) -> str:
    """Ingest a WFDB folder with clef_platform.ingest (Ray must be initialised)."""
    from clef_platform.ingest.pipeline import IngestConfig, run_ingest

    summary = run_ingest(IngestConfig(corpus=corpus, source=Path(source).resolve(), dest=dest,
                                      shard_bytes=shard_bytes, workers=2,
                                      cpus_per_worker=cpus_per_worker))
    if not summary.balanced:
        raise RuntimeError(f"ingest of {source} did not balance")
    return dest


def write_export(run_url: str, step: int, scale: str = "small", seed: int = 0, model=None,
                 extra: dict | None = None) -> str:
    """An export of `model` (default: a seeded random encoder) at `run_url/exports/step_<N>`,
    committed with the `_COMPLETE` marker like clef_platform.train.export."""
    import torch

    from clef_model import build_encoder
    from clef_platform.train.export import export_encoder

    if model is None:
        torch.manual_seed(seed)
        model = build_encoder(scale)
    run_url = str(run_url).rstrip("/")
    storage, _, run_name = run_url.rpartition("/")
    return export_encoder(model, storage, run_name, step, extra=extra)


def raw_sha256(corpus: str, source: Path, names: Iterable[str]) -> list[str]:
    """sha256 of the canonical signal of raw WFDB records, computed straight from the files
    (independently of any ingested dataset): what a pretraining manifest lists."""
    from clef_platform.ingest.adapters import get_adapter
    from clef_platform.ingest.canonical import process_record
    from clef_platform.ingest.record import CanonicalRecord
    from clef_platform.layout.shards import signal_sha256

    wanted = set(names)
    out = []
    for ref in get_adapter(corpus).list_records(Path(source)):
        if ref.record_id in wanted:
            rec = process_record(ref)
            assert isinstance(rec, CanonicalRecord), rec
            out.append(signal_sha256(rec.digital))
    return out


def write_marker_info(run_url: str, step: int, **info) -> None:
    """Add keys (e.g. data=..., split=...) to an export's _COMPLETE marker."""
    from clef_platform.storage import open_store

    store = open_store(run_url)
    key = f"exports/step_{step}/_COMPLETE"
    cur = json.loads(store.get_bytes(key) or b"{}")
    store.put_bytes(key, json.dumps({**cur, **info}, sort_keys=True).encode())
