"""Lineage drives leakage exclusion: an export whose marker names its training dataset excludes
exactly that split's records; --pretrain-manifest adds more; an export without lineage is
skipped unless allowed (then the report says leakage was not checked); an export whose training
dataset changed since training is refused naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from clef_platform.evaluate.discovery import discover_exports
from clef_platform.evaluate.embed import extract
from clef_platform.evaluate.leakage import run_exclusion
from clef_platform.evaluate.passes import EvalConfig, evaluate_pass
from clef_platform.evaluate.probes import ProbeConfig
from clef_platform.evaluate.tasks import load_tasks
from clef_platform.layout.dataset import open_dataset
from clef_platform.layout.results import ResultsStore
from tests.fixtures import BUNDLED, ingest, raw_sha256, subset_folder, training_data, write_export

pytestmark = pytest.mark.slow
NAMES = [str(i) for i in range(101, 131)]          # LUDB records 101-130
PROBE = ProbeConfig(logistic_C=(0.1, 1.0), ridge_alpha=(10.0, 100.0), n_bootstrap=200)


@pytest.fixture(scope="module")
def ludb30(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_leak")
    src = subset_folder(BUNDLED["ludb"], root / "src", NAMES)
    return ingest("ludb", src, str(root / "data" / "ludb"), shard_bytes=1_000_000)


def test_marker_lineage_excludes_exactly_its_training_split(ludb30, tmp_path):
    ds = open_dataset(ludb30)
    train = ds.frame("train")
    assert 0 < len(train) < 30
    run = tmp_path / "r"
    url = write_export(str(run), 5, "small", seed=3, training_data=[training_data(ludb30)])
    found = discover_exports(str(run))
    assert [e.location for e in found.exports] == [url] and not found.no_lineage
    ex = run_exclusion(found.markers)
    assert not ex.refused
    assert ex.exclusion.hashes == frozenset(train["sha256"]) | frozenset(train["source_sha256"])
    assert ludb30 in ex.exclusion.sources[0]

    emb = extract(ds, found.exports[0], 0, 5000, ex.exclusion.hashes, actors=1)
    assert emb.n_excluded == len(train)
    assert set(emb.keys) == set(ds.frame()["key"]) - set(train["key"])
    assert {r["split"] for r in emb.records} <= {"val", "test"}

    # A pretraining manifest only adds: 8 other records' checksums, from the raw files.
    extra = raw_sha256("ludb", BUNDLED["ludb"], ["1", "2", "3", "4", "5", "6", "7", "8"])
    pd.DataFrame({"sha256": extra}).to_parquet(tmp_path / "more.parquet")
    more = run_exclusion(found.markers, str(tmp_path / "more.parquet"))
    assert more.exclusion.hashes == ex.exclusion.hashes | frozenset(extra)
    assert more.exclusion.digest != ex.exclusion.digest


def test_export_without_lineage_needs_the_flag_and_is_reported(ludb30, tmp_path):
    run = tmp_path / "r"
    url = write_export(str(run), 7, "small", seed=4)          # marker names no training data
    cfg = EvalConfig(run_url=str(run), tasks=load_tasks(["ludb_sex"]),
                     data_root=str(Path(ludb30).parent), probe=PROBE, retries=0, actors=1)
    s = evaluate_pass(cfg)
    assert s.no_lineage == [url] and s.exports == 0 and s.added == 0 and not s.failed
    assert ResultsStore(cfg.results_url).read().empty
    assert "no lineage" in Path(s.report).read_text()

    cfg.allow_no_lineage = True
    s = evaluate_pass(cfg)
    assert s.exports == 1 and s.added == 2 and not s.failed     # export + random baseline
    df = ResultsStore(cfg.results_url).read()
    assert df.set_index("kind")["lineage"].to_dict() == {"export": "none", "random": "checked"}
    assert (df["n_excluded_leakage"] == 0).all()
    page = Path(s.report).read_text()
    assert f"<code>{url}</code>: no lineage: leakage not checked" in page


def test_export_whose_training_dataset_changed_is_refused_naming_it(ludb30, tmp_path):
    # Trained on a dataset that was later re-ingested at the same URL with other records.
    trained_on = tmp_path / "datasets" / "pretrain"
    shutil.copytree(ludb30, trained_on)
    run = tmp_path / "r"
    write_export(str(run), 3, "small", training_data=[training_data(str(trained_on))])
    shutil.rmtree(trained_on)
    src = subset_folder(BUNDLED["ludb"], tmp_path / "src", ["1", "2", "3"])
    ingest("ludb", src, str(trained_on))
    cfg = EvalConfig(run_url=str(run), tasks=load_tasks(["ludb_sex"]),
                     data_root=str(Path(ludb30).parent), probe=PROBE, retries=0, actors=1)
    s = evaluate_pass(cfg, render=False)
    (export, why), = s.refused.items()
    assert export.endswith("exports/step_3") and "\n" not in why
    assert f"training dataset {trained_on} has digest" in why and "changed since training" in why
    assert s.exports == 0 and s.added == 0 and ResultsStore(cfg.results_url).read().empty
    assert any(f == (export, "*", why) for f in s.failed)       # the job exits 1
