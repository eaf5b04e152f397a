"""The other objectives and the plain-DDP path: BYOL without DeepSpeed (DDP through
ray.train.torch.prepare_model), MoCo with DeepSpeed and views made in DataLoader workers."""

from __future__ import annotations

import math

import pytest

from clef_platform.train.config import PretrainConfig

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method,extra", [
    ("byol", ["--no-deepspeed"]),
    ("moco", ["--zero-stage", "1", "--data.views_on", "loader", "--moco-queue", "64"]),
])
def test_method_trains_and_exports(ludb_train_data, tmp_path, method, extra):
    from clef_platform.layout.export import load_export
    from clef_platform.train.run import run_pretraining

    cfg = PretrainConfig.from_args([
        "--scale", "small", "--method", method, "--data", ludb_train_data["data"],
        "--storage", str(tmp_path / "runs"), "--run-name", method, "--workers", "2",
        "--batch-per-worker", "4", "--steps", "3", "--checkpoint-every", "2",
        "--cpus-per-worker", "1", "--data.loader_workers", "1", *extra])
    res = run_pretraining(cfg)
    assert res.error is None and res.metrics["step"] == 3
    assert math.isfinite(res.metrics["loss"])
    assert sorted(res.exports) == [2, 3]
    assert load_export(res.exports[3]).embedding_dim == 256
