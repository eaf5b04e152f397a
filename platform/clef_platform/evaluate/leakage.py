"""Leakage exclusion: the records a run trained on, from its exports' lineage.

Every export marker (`layout.export.ExportMarker`) names the datasets it trained on
(`training_data`: URL, split, dataset digest). Each such dataset is opened
(`layout.dataset.open_dataset`) and its digest compared with the marker's: a dataset that changed
since training cannot say what the export saw, so that export is refused (one line naming the
dataset). The records of the named split, by canonical-signal SHA-256 and by the SHA-256 of
their source signal files (a window names its parent's, so a recording trained on as windows
is excluded where a dataset holds it whole, and the other way round), are excluded from every
probe of the run, baselines included, so every row of a run is scored on the same records.
`--pretrain-manifest` (a table with a sha256 column) only adds more.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from clef_platform.digests import stable_hash
from clef_platform.layout.dataset import Dataset, open_dataset
from clef_platform.layout.errors import DatasetError
from clef_platform.layout.export import ExportMarker
from clef_platform.storage import ObjectStore, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exclusion:
    hashes: frozenset[str] = frozenset()
    sources: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """Names the exclusion set in result keys: a different set gives new results."""
        return stable_hash(sorted(self.hashes), length=32)


@dataclass
class RunExclusion:
    exclusion: Exclusion
    refused: dict[str, str] = field(default_factory=dict)   # export URL -> one-line reason


def _split_url(url: str) -> tuple[ObjectStore, str]:
    """An object URL -> (store of its parent, key): paths, file:// and s3://."""
    url = str(url).rstrip("/")
    if url.startswith("s3://"):
        parent, _, leaf = url.rpartition("/")
        if parent == "s3:/":
            raise ValueError(f"{url}: expected s3://bucket/.../object")
        return open_store(parent), leaf
    if url.startswith("file://"):
        url = url[len("file://"):]
    p = Path(url)
    return open_store(p.parent), p.name


def read_table(url: str) -> pd.DataFrame:
    """A Parquet, CSV or JSON-lines table from a path, file:// or s3:// URL."""
    store, key = _split_url(url)
    data = store.get_bytes(key)
    suffix = PurePosixPath(key).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(io.BytesIO(data))
    if suffix == ".csv":
        return pd.read_csv(io.BytesIO(data))
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(io.BytesIO(data), lines=True)
    raise ValueError(f"{url}: expected .parquet, .csv or .jsonl")


def manifest_hashes(url: str, split: str | None = None) -> frozenset[str]:
    """The sha256 column of a pretraining manifest (rows of `split` when it has a split column)."""
    df = read_table(url)
    if "sha256" not in df.columns:
        raise ValueError(f"pretraining manifest {url} has no 'sha256' column "
                         f"(columns: {list(df.columns)})")
    if split and "split" in df.columns:
        df = df[df["split"] == split]
    return frozenset(str(s) for s in df["sha256"].dropna())


def lineage_hashes(marker: ExportMarker, export: str,
                   cache: dict[str, Dataset] | None = None) -> tuple[frozenset[str], list[str]]:
    """sha256 of every record of every split the export's marker names, and their sources.

    Raises DatasetError (one line, naming the dataset) when a training dataset cannot be opened
    or its digest is not the marker's."""
    cache = {} if cache is None else cache
    hashes: set[str] = set()
    sources = []
    for t in marker.training_data:
        if t.url not in cache:
            try:
                cache[t.url] = open_dataset(t.url)
            except DatasetError as e:
                raise DatasetError(f"export {export}: training dataset {t.url} unreadable "
                                   f"({e})") from None
        ds = cache[t.url]
        if ds.digest != t.dataset_digest:
            raise DatasetError(
                f"export {export}: training dataset {t.url} has digest {ds.digest[:16]}, the "
                f"marker says {t.dataset_digest[:16]} (changed since training); not scored")
        split = ds.frame(t.split)
        hashes.update(split["sha256"].astype(str))
        # and the source files' digests, for the same recording windowed or whole elsewhere
        hashes.update(h for h in split["source_sha256"].astype(str) if h)
        sources.append(f"{t.url} (split {t.split}, {len(split)} records, digest "
                       f"{t.dataset_digest[:16]})")
    return frozenset(hashes), sources


def run_exclusion(markers: dict[str, ExportMarker], pretrain_manifest: str | None = None,
                  pretrain_split: str | None = None) -> RunExclusion:
    """The run's exclusion set from the markers {export URL: marker} (+ an optional manifest);
    exports whose lineage does not check out are refused, not excluded from."""
    hashes: set[str] = set()
    sources: list[str] = []
    refused: dict[str, str] = {}
    cache: dict[str, Dataset] = {}
    for url, marker in sorted(markers.items()):
        try:
            h, s = lineage_hashes(marker, url, cache)
        except DatasetError as e:
            refused[url] = str(e)
            log.error("%s", e)
            continue
        hashes |= h
        sources += s
    if pretrain_manifest:
        hashes |= manifest_hashes(pretrain_manifest, pretrain_split)
        sources.append(pretrain_manifest + (f" (split {pretrain_split})" if pretrain_split
                                            else ""))
    return RunExclusion(Exclusion(frozenset(hashes), tuple(sorted(set(sources)))), refused)
