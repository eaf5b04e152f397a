"""Small real-data setups for the evaluation tests: bundled corpora (or a subset of their
records) ingested with the platform's own ingestion, and encoder exports committed with
`layout.export.write_export` (the writer training uses) from a `clef_model.save_encoder` folder,
with the lineage (`TrainingData`) training records."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[1]
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


def training_data(url: str, split: str = "train"):
    """The lineage entry training writes for a dataset split it trained on."""
    from clef_platform.layout.dataset import open_dataset
    from clef_platform.layout.export import TrainingData

    ds = open_dataset(url)
    return TrainingData(url=ds.url, split=split, dataset_digest=ds.digest,
                        records=ds.records(split))


def write_export(run_url: str, step: int, scale: str = "small", seed: int = 0, model=None,
                 training_data: tuple = (), method: str = "clef") -> str:
    """Commit `model` (default: a seeded random encoder) as the export of `step` of the run at
    `run_url`, through `layout.export.write_export` from a `save_encoder` folder."""
    import torch

    from clef_model import build_encoder, save_encoder
    from clef_platform.digests import stable_hash
    from clef_platform.layout.export import write_export as commit

    if model is None:
        torch.manual_seed(seed)
        model = build_encoder(scale)
    storage, _, run_name = str(run_url).rstrip("/").rpartition("/")
    with tempfile.TemporaryDirectory(prefix="clef-test-export-") as d:
        folder = save_encoder(model, Path(d) / "export")
        url, _ = commit(folder, storage, run_name, step, method=method, scale=scale,
                        recipe="test", config_digest=stable_hash(scale, seed, method),
                        training_data=tuple(training_data), loss=None)
    return url


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
