"""No leakage: records whose canonical-signal sha256 is in the checkpoint's pretraining manifest
are excluded from every probe, whichever way the manifest is found."""

from __future__ import annotations

import pandas as pd
import pytest

from clef_platform.evaluate.data import open_dataset
from clef_platform.evaluate.embed import ModelSpec, extract
from clef_platform.evaluate.fixtures import (BUNDLED, ingest, raw_sha256, subset_folder,
                                             write_export, write_marker_info)
from clef_platform.evaluate.scheduler import EvalConfig, list_exports, pretraining_exclusion
from clef_platform.evaluate.tasks import load_tasks

pytestmark = pytest.mark.slow
NAMES = [str(i) for i in range(101, 131)]          # LUDB records 101-130


@pytest.fixture(scope="module")
def ludb30(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_leak")
    src = subset_folder(BUNDLED["ludb"], root / "src", NAMES)
    return ingest("ludb", src, str(root / "ludb"), shard_bytes=1_000_000)


def test_overlapping_records_are_excluded_by_checksum(ludb30, tmp_path):
    ds = open_dataset(ludb30)
    # The pretraining manifest: checksums computed from the raw WFDB files of 8 of the records
    # (independently of the probe dataset's keys) plus 3 records the probe set does not hold.
    overlap = NAMES[:8]
    hashes = raw_sha256("ludb", BUNDLED["ludb"], overlap + ["1", "2", "3"])
    pd.DataFrame({"sha256": hashes, "key": [f"pretrain_{i}" for i in range(len(hashes))]}
                 ).to_parquet(tmp_path / "pretrain.parquet")
    run = tmp_path / "r"
    write_export(str(run), 5, "small", seed=3)
    cfg = EvalConfig(run_url=str(run), tasks=load_tasks(["ludb_sex"]), data_root=".",
                     pretrain_manifest=str(tmp_path / "pretrain.parquet"))
    exclude, sources = pretraining_exclusion(cfg, list_exports(str(run)))
    assert exclude == frozenset(hashes) and sources

    emb = extract(ds, ModelSpec("random", "small", seed=0), 0, 5000, exclude, actors=2)
    assert emb.n_excluded == 8
    got = {r["record_id"] for r in emb.records}
    assert got == set(NAMES[8:]) and len(emb.X) == 22
    assert not {r["meta"]["sha256"] for r in emb.records} & set(hashes)


def test_export_marker_naming_its_training_split_excludes_that_split(ludb30, tmp_path):
    ds = open_dataset(ludb30)
    run = tmp_path / "r"
    write_export(str(run), 5, "small", seed=3)
    # What a training job that records its dataset would write into the _COMPLETE marker.
    write_marker_info(str(run), 5, data=ludb30, split="train")
    cfg = EvalConfig(run_url=str(run), tasks=load_tasks(["ludb_sex"]), data_root=".")
    exclude, _ = pretraining_exclusion(cfg, list_exports(str(run)))
    train = ds.manifest[ds.manifest["split"] == "train"]
    assert exclude == frozenset(train["sha256"]) and 0 < len(train) < 30

    emb = extract(ds, ModelSpec("export", "small", location=str(run / "exports" / "step_5")),
                  0, 5000, exclude, actors=2)
    assert emb.n_excluded == len(train)
    assert {r["split"] for r in emb.records} <= {"val", "test"}
    assert len(emb.records) == 30 - len(train)
