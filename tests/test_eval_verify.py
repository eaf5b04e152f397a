"""Evaluation reads shards verified: a damaged shard (bytes overwritten, cut at a member
boundary, cut mid-member, a flipped tar header byte) fails the task with an error naming the
shard and stores no result; the repaired dataset is then scored."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clef_platform.evaluate.passes import EvalConfig, evaluate_pass
from clef_platform.evaluate.probes import ProbeConfig
from clef_platform.evaluate.tasks import load_tasks
from clef_platform.layout.dataset import open_dataset
from clef_platform.layout.results import ResultsStore
from tests import damage
from tests.fixtures import BUNDLED, ingest, subset_folder, write_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ludb60(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_verify")
    src = subset_folder(BUNDLED["ludb"], root / "src", [str(i) for i in range(1, 61)])
    return ingest("ludb", src, str(root / "ludb"), shard_bytes=1_000_000)


def test_damaged_shards_are_refused_naming_them_and_repair_is_scored(ludb60, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ludb60, data / "ludb")
    ds = open_dataset(str(data / "ludb"))
    shard = ds.split_shards("train")[0]
    path = data / "ludb" / shard.key
    good = path.read_bytes()
    run = tmp_path / "runs" / "r"
    write_export(str(run), 4, "small", seed=0)
    cfg = EvalConfig(run_url=str(run), tasks=load_tasks(["ludb_sex"]), data_root=str(data),
                     allow_no_lineage=True, random_baseline=False, retries=0, actors=1,
                     probe=ProbeConfig(logistic_C=(0.1, 1.0), n_bootstrap=200))
    results = ResultsStore(cfg.results_url)
    for kind, spoil in damage.KINDS.items():
        spoil(path)
        assert path.read_bytes() != good, kind
        s = evaluate_pass(cfg, render=False)
        assert s.added == 0 and len(s.failed) == 1, (kind, s)
        (_, task, error), = s.failed
        assert task == "ludb_sex" and f"shard {shard.name}:" in error, (kind, error)
        assert "\n" not in error
        assert results.read().empty, kind
        path.write_bytes(good)            # repair: the good shard copied back

    s = evaluate_pass(cfg, render=False)
    assert s.added == 1 and not s.failed
    df = results.read()
    assert len(df) == 1 and df["status"].iloc[0] == "ok"
    assert df["dataset_digest"].iloc[0] == ds.digest
    assert "verify_records" in df["detail"].iloc[0]


def test_export_whose_weights_changed_is_refused_naming_the_file(ludb60, tmp_path):
    run = tmp_path / "runs" / "r"
    url = write_export(str(run), 6, "small", seed=0)
    weights = next((run / "exports" / "step_6").glob("a-*/encoder.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    cfg = EvalConfig(run_url=str(run), tasks=load_tasks(["ludb_sex"]),
                     data_root=str(Path(ludb60).parent), allow_no_lineage=True, retries=0,
                     actors=1, random_baseline=False)
    s = evaluate_pass(cfg, render=False)
    assert s.added == 0 and list(s.refused) == [url]
    assert "encoder.safetensors differs from its SHA-256 in the marker" in s.refused[url]
    assert ResultsStore(cfg.results_url).read().empty
