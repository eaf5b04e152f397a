"""Mixed pretraining corpora: two real datasets (the bundled LUDB and the CinC 2021 sample,
each ingested by the platform) with sampling weights 3:1. The training loader (`make_batches`,
what the loop's data builder iterates) draws records in that proportion, in streamed and in
epoch order, an epoch is their training records together, the risk table covers both, and a
short Ray Train run's export marker names both datasets with digest and weight, so evaluation
excludes the training records of both."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import pytest

from clef_model.views import ViewConfig
from tests.fixtures import BUNDLED, ingest

pytestmark = pytest.mark.slow

WEIGHTS = (3.0, 1.0)


@pytest.fixture(scope="module")
def cinc_data(ray_local, tmp_path_factory) -> str:
    return ingest("cinc2021", BUNDLED["cinc2021"],
                  str(tmp_path_factory.mktemp("cinc_mixed") / "cinc"), shard_bytes=600_000)


def mixed_cfg(ludb, cinc, tmp_path, *extra):
    from clef_platform.train.config import PretrainConfig

    return PretrainConfig.from_args([
        "--scale", "small", "--method", "simclr", "--data", ludb, "--data", cinc,
        "--data-weights", "3,1", "--storage", str(tmp_path / "runs"), "--run-name", "mixed",
        "--workers", "1", "--cpus-per-worker", "1", "--batch-per-worker", "8",
        "--data.loader_workers", "0", "--metrics.log_every", "1", *extra])


def within_binomial(count: int, n: int, p: float, sds: float = 4.0) -> bool:
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def draw(cfg, n_batches: int, n_records: int, spe: int):
    """Batches of rank 0 of 1 through the loader the training loop uses."""
    from clef_platform.train.data import fetch_risk_tables, make_batches

    table = fetch_risk_tables([u for u, _ in cfg.datasets], cfg.data.split, "")
    it = make_batches(cfg, 0, 1, table, ViewConfig(length=cfg.data.view_length, seed=cfg.seed),
                      start_micro=0, steps_per_epoch=spe, n_records=n_records)
    return [next(it) for _ in range(n_batches)]


def test_mixed_datasets_draw_in_proportion_and_export_names_both(ludb_train_data, cinc_data,
                                                                tmp_path):
    from clef_platform.evaluate.leakage import run_exclusion
    from clef_platform.layout.dataset import open_dataset
    from clef_platform.layout.export import list_exports, read_marker, run_url
    from clef_platform.train.data import epoch_plan
    from clef_platform.train.run import run_pretraining

    ludb = ludb_train_data["data"]
    frames = [open_dataset(u).frame("train") for u in (ludb, cinc_data)]
    keys = [set(f["key"]) for f in frames]
    assert not keys[0] & keys[1]
    n_records = sum(len(f) for f in frames)
    p0 = WEIGHTS[0] / sum(WEIGHTS)

    # ---- streamed (--steps): 60 batches of 8, each sample's dataset a seeded weighted choice
    cfg = mixed_cfg(ludb, cinc_data, tmp_path, "--steps", "2")
    assert cfg.datasets == [(ludb, 3.0), (cinc_data, 1.0)]
    batches = draw(cfg, 60, n_records, 1)
    sources = [s for b in batches for s in b["sources"]]
    for b in batches:   # the source a batch reports is the dataset that holds the record
        assert all(k in keys[s] for k, s in zip(b["keys"], b["sources"]))
    n = len(sources)
    assert n == 480 and within_binomial(sources.count(0), n, p0), sources.count(0)
    # deterministic per seed: the same draw again
    assert [b["keys"] for b in draw(cfg, 5, n_records, 1)] == [b["keys"] for b in batches[:5]]

    # ---- one epoch (--epochs 1): as many samples as both training splits together
    ecfg = mixed_cfg(ludb, cinc_data, tmp_path, "--epochs", "1")
    spe, keep_last = epoch_plan(n_records, ecfg.global_batch, 1)
    epoch = draw(ecfg, spe, n_records, spe)
    assert all(b["epoch"] == 0 for b in epoch)
    drawn = [(k, s) for b in epoch for k, s in zip(b["keys"], b["sources"])]
    assert len(drawn) == (n_records if keep_last or n_records % 8 == 0
                          else n_records - n_records % 8)
    assert all(k in keys[s] for k, s in drawn)
    count0 = sum(s == 0 for _, s in drawn)
    assert within_binomial(count0, len(drawn), p0), count0
    # within one pass of a dataset a record comes at most once: a record repeats only after
    # its dataset's pass is used up
    per = collections.Counter(drawn)
    for s in (0, 1):
        drawn_s = sum(s == ds for _, ds in drawn)
        assert max(n for (_, ds), n in per.items() if ds == s) <= math.ceil(
            drawn_s / len(keys[s]))

    # ---- a short Ray Train run: its export marker names both datasets, weights and digests
    res = run_pretraining(cfg)
    assert res.error is None and res.metrics["step"] == 2
    url = list_exports(run_url(str(tmp_path / "runs"), "mixed"))[2]
    marker = read_marker(url)
    assert [(t.url, t.dataset_digest, t.weight, t.records) for t in marker.training_data] == [
        (str(Path(u).resolve()), open_dataset(u).digest, w, len(f))
        for u, w, f in zip((ludb, cinc_data), WEIGHTS, frames)]
    # evaluation's leakage exclusion reads the marker: both datasets' training records
    excl = run_exclusion({url: marker})
    assert not excl.refused
    assert excl.exclusion.hashes == frozenset(
        str(h) for f in frames for col in ("sha256", "source_sha256") for h in f[col])
