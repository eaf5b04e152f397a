"""--epochs on real LUDB shards through Ray Train + DeepSpeed on CPU (2 workers): exact passes
(every training record once per epoch, different views per epoch, the last partial batch kept),
and the paper recipe's early stopping on the training loss, its export marker naming the recipe.
"""

from __future__ import annotations

import collections
import math
import glob
import json
from pathlib import Path

import pytest

from clef_platform.train.config import PretrainConfig
from tests.helpers import ludb_pretrain_config

pytestmark = pytest.mark.slow


def make_cfg(ludb, tmp_path, run_name, *extra) -> PretrainConfig:
    return ludb_pretrain_config(ludb, tmp_path, run_name, "--workers", "2", *extra)


def traces(trace_dir):
    out = [json.loads(Path(f).read_text())
           for f in glob.glob(str(Path(trace_dir) / "rank*_step*_micro*.json"))]
    return sorted(out, key=lambda t: (t["step"], t["rank"]))


def test_two_epochs_see_every_training_record_twice_with_new_views(ludb_train_data, tmp_path):
    from clef_platform.layout.dataset import open_dataset
    from clef_platform.train.data import epoch_plan
    from clef_platform.train.run import run_pretraining

    keys = open_dataset(ludb_train_data["data"]).frame("train")["key"].tolist()
    spe, keep_last = epoch_plan(len(keys), 64, 2)
    assert keep_last and len(keys) % 64, "the test wants a last partial batch"
    cfg = make_cfg(ludb_train_data, tmp_path, "ep2", "--epochs", "2", "--batch-per-worker", "32",
                   "--checkpoint-every", "1000")
    trace = tmp_path / "trace"
    res = run_pretraining(cfg, trace_dir=str(trace), trace_steps=1000)
    assert res.error is None and res.metrics["step"] == 2 * spe == cfg.steps
    ts = traces(trace)
    assert {t["step"] for t in ts} == set(range(2 * spe))
    for epoch in (0, 1):
        seen = collections.Counter(k for t in ts if t["epoch"] == epoch for k in t["keys"])
        assert sorted(seen) == sorted(keys) and set(seen.values()) == {1}, epoch
        # the last step of the epoch is the partial batch, split evenly over the 2 ranks
        last = [len(t["keys"]) for t in ts if t["step"] == (epoch + 1) * spe - 1]
        assert sorted(last) == sorted([(len(keys) % 64) // 2 + r for r in (0, (len(keys) % 2))])
    views = {(t["epoch"], k): v for t in ts for k, v in zip(t["keys"], t["view_sha256"])}
    assert all(views[(0, k)] != views[(1, k)] for k in keys)          # new views each epoch
    order = [[k for t in ts if t["epoch"] == e for k in t["keys"]] for e in (0, 1)]
    assert order[0] != order[1]                                         # reshuffled per epoch
    assert all(t["loss"] == t["loss"] for t in ts)                       # finite


def test_paper_recipe_stops_early_and_its_export_names_the_recipe(ludb_train_data, tmp_path):
    """Patience 1 with a required improvement no loss can make: the run stops after epoch 2
    of 6 (epoch 1 always improves on +inf), exports that step, and the marker says 'paper'."""
    from clef_platform.layout.dataset import open_dataset
    from clef_platform.layout.export import list_exports, read_marker, run_url
    from clef_platform.train.data import epoch_plan
    from clef_platform.train.run import run_pretraining

    n = open_dataset(ludb_train_data["data"]).records("train")
    spe, _ = epoch_plan(n, 64, 2)
    cfg = make_cfg(ludb_train_data, tmp_path, "paper-es", "--recipe", "paper", "--epochs", "6",
                   "--patience", "1", "--patience-delta", "1e9", "--checkpoint-every", "1000")
    assert (cfg.batch_per_worker, cfg.optim.lr, cfg.optim.schedule) == (32, 1e-4,
                                                                        "cosine-restarts")
    res = run_pretraining(cfg)
    assert res.error is None
    assert res.metrics["step"] == 2 * spe < cfg.steps == 6 * spe
    assert res.metrics["epoch"] == 2
    assert sorted(res.exports) == [2 * spe]
    m = read_marker(list_exports(run_url(str(tmp_path / "runs"), "paper-es"))[2 * spe])
    assert (m.recipe, m.method, m.step) == ("paper", "clef", 2 * spe)
    # the reported lr is the scheduler's after the last step: that of epoch index 2 (of the
    # first 10-epoch cycle), which the next step would have used
    assert res.metrics["lr"] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi * 2
                                                                                   / 10)) / 2,
                                              rel=1e-9)
