"""Training on damaged data: the loader's checks reach the real training job (Ray Train +
DeepSpeed on LUDB shards). on_damage=fail stops the run naming the shard; on_damage=skip trains
on the intact shards only and counts what it left out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clef_platform.layout.dataset import open_dataset
from clef_platform.train.config import PretrainConfig
from tests.damage import KINDS
from tests.test_train_distributed import read_events, read_traces

pytestmark = pytest.mark.slow


def damaged_copy(src: str, dest: Path, every: int) -> set[str]:
    """A copy of the dataset with every `every`-th train shard damaged (the four kinds in turn);
    returns the damaged shard names."""
    shutil.copytree(src, dest)
    names = [s.name for s in open_dataset(str(dest)).split_shards("train")]
    kinds = sorted(KINDS)
    hit = set()
    for i, name in enumerate(names[::every]):
        KINDS[kinds[i % len(kinds)]](dest / "shards" / f"{name}.tar")
        hit.add(name)
    return hit


def cfg_for(ludb, data: Path, tmp_path: Path, name: str, policy: str) -> PretrainConfig:
    return PretrainConfig.from_args([
        "--scale", "small", "--method", "clef", "--data", str(data),
        "--features", ludb["features"], "--storage", str(tmp_path / "runs"), "--run-name", name,
        "--workers", "1", "--batch-per-worker", "8", "--steps", "4", "--checkpoint.every", "100",
        "--cpus-per-worker", "1", "--data.loader_workers", "1", "--data.on_damage", policy,
        "--cluster.max_failures", "0", "--metrics.log_every", "1"])


def test_fail_policy_stops_the_run_naming_the_shard(ludb_train_data, tmp_path):
    from clef_platform.train.run import run_pretraining

    damaged = damaged_copy(ludb_train_data["data"], tmp_path / "data", every=1)
    res = run_pretraining(cfg_for(ludb_train_data, tmp_path / "data", tmp_path, "fail", "fail"),
                          raise_on_error=False)
    assert res.error is not None and not res.exports
    text = str(res.error)
    assert any(f"shard {n}:" in text for n in damaged), text[-2000:]


def test_skip_policy_trains_on_intact_shards_and_counts_the_rest(ludb_train_data, tmp_path):
    from clef_platform.train.run import run_pretraining

    damaged = damaged_copy(ludb_train_data["data"], tmp_path / "data", every=2)
    trace = tmp_path / "trace"
    res = run_pretraining(cfg_for(ludb_train_data, tmp_path / "data", tmp_path, "skip", "skip"),
                          trace_dir=str(trace), trace_steps=4)
    assert res.metrics["step"] == 4 and res.metrics["damaged_skipped"] > 0
    events = [e for e in read_events(trace, 0) if e["event"] == "damaged"]
    assert len(events) == res.metrics["damaged_skipped"]
    assert {e["what"].split(":")[0].removeprefix("shard ") for e in events} <= damaged
    frame = open_dataset(str(tmp_path / "data")).frame("train")
    bad_keys = set(frame[frame["shard"].isin(damaged)]["key"])
    seen = {k for t in read_traces(trace) for k in t["keys"]}
    assert seen and not seen & bad_keys          # nothing of a damaged shard reached the loss
