"""Encoder exports written by training, through the one export writer
(`clef_platform.layout.export.write_export`: attempt folder + typed `_COMPLETE` marker with
lineage and file digests; an export, once committed, never changes).

`training_lineage(cfg)` runs once on the driver; the loop passes its result to `export_encoder`.
List a run's exports with `clef_platform.layout.export.list_exports(run_url)`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from clef_model import save_encoder
from clef_platform.digests import stable_hash
from clef_platform.layout.export import TrainingData, write_export


def dataset_url(url: str) -> str:
    """The dataset URL as given, local paths made absolute (the marker must name it anywhere)."""
    if "://" in url and not url.startswith("file://"):
        return url
    path = url[len("file://"):] if url.startswith("file://") else url
    return os.path.abspath(path)


def training_lineage(cfg) -> list[dict]:
    """[TrainingData as a dict] of what `cfg` trains on, one per --data dataset in order: URL,
    split, dataset digest, records, sampling weight (evaluation excludes every one's split)."""
    from dataclasses import asdict

    from clef_platform.layout.dataset import open_dataset

    out = []
    for url, weight in cfg.datasets:
        ds = open_dataset(url)
        out.append(asdict(TrainingData(url=dataset_url(url), split=cfg.data.split,
                                       dataset_digest=ds.digest,
                                       records=int(ds.records(cfg.data.split)),
                                       weight=float(weight))))
    return out


def marker_fields(cfg, lineage: list[dict]) -> dict:
    """The marker's lineage fields for a run of `cfg` (the loss is added per export)."""
    return {"method": cfg.method, "scale": cfg.scale, "recipe": cfg.recipe,
            "config_digest": stable_hash(cfg.to_dict()),
            "training_data": tuple(TrainingData(**t) for t in lineage)}


def export_encoder(module, storage: str, run_name: str, step: int, **marker) -> tuple[str, bool]:
    """Export the encoder of `module` for `step`; (export URL, created). A step that already has
    an export (a replayed step) keeps it unchanged: created is False."""
    with tempfile.TemporaryDirectory(prefix="clef-export-") as tmp:
        local = save_encoder(module, Path(tmp) / "export")
        return write_export(local, storage, run_name, step, **marker)
