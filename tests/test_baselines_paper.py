"""`--baseline-variant paper` (the release's MoCo and BYOL) on real LUDB views, no Ray: MoCo's
queue takes each step's keys once, normalised; BYOL's predictor has the release's shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb
from torch import nn

from clef_model.views import ViewConfig, make_views, record_seed
from clef_platform.train.config import PretrainConfig
from clef_platform.train.objectives import build_module

LUDB = Path(__file__).resolve().parents[1] / "data" / "ludb" / "data"


def ludb_views(n=8):
    sig = np.stack([wfdb.rdrecord(str(LUDB / str(i))).p_signal.T for i in range(1, n + 1)])
    seeds = torch.tensor([record_seed(0, str(i), 0) for i in range(1, n + 1)])
    return make_views(torch.from_numpy(sig.astype(np.float32)), torch.ones(n, 12, dtype=bool),
                      seeds, ViewConfig())


def module_for(method, *extra):
    cfg = PretrainConfig.from_args(["--data", "unused", "--method", method,
                                    "--baseline-variant", "paper", *extra])
    m = build_module(cfg)
    m.attach_target(torch.device("cpu"))
    return cfg, m


def test_paper_moco_queue_takes_each_steps_keys_once_normalised():
    cfg, m = module_for("moco")
    assert (cfg.moco_queue, cfg.momentum, cfg.temperature) == (65536, 0.999, 0.07)
    assert isinstance(m.projector, nn.Identity)              # no projector in the release
    queue = m._queue[0]
    assert tuple(queue.keys.shape) == (65536, m.encoder.embedding_dim)
    v1, v2 = ludb_views()
    before = queue.keys.clone()
    m.train()
    loss = m(v1, v2)
    assert torch.isfinite(loss)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(m._target[0](v2).float(), dim=1)
    m.after_step()
    n = v1.shape[0]
    assert int(queue.ptr) == n                               # once: n keys, not 2n
    torch.testing.assert_close(queue.keys[:n], expected, rtol=0, atol=1e-6)
    assert torch.allclose(queue.keys[:n].norm(dim=1), torch.ones(n), atol=1e-6)
    assert torch.equal(queue.keys[n:], before[n:])           # the rest untouched
    # a given --moco-queue / --momentum wins over the variant's values
    cfg2, _ = module_for("moco", "--moco-queue", "128", "--momentum", "0.9")
    assert (cfg2.moco_queue, cfg2.momentum) == (128, 0.9)


def test_paper_byol_predictor_has_the_release_shapes():
    cfg, m = module_for("byol")
    assert cfg.momentum == 0.996
    d = m.encoder.embedding_dim
    assert isinstance(m.projector, nn.Identity)
    kinds = [type(x) for x in m.predictor]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (m.predictor[0].in_features, m.predictor[0].out_features) == (d, d // 2)
    assert m.predictor[1].num_features == d // 2
    assert (m.predictor[3].in_features, m.predictor[3].out_features) == (d // 2, d)
    # the target is a copy of the encoder alone (no projector) and takes no gradient
    target = m._target[0]
    assert sum(p.numel() for p in target.parameters()) == sum(
        p.numel() for p in m.encoder.parameters())
    assert not any(p.requires_grad for p in target.parameters())
    v1, v2 = ludb_views()
    loss = m(v1, v2)
    assert torch.isfinite(loss) and 0 <= float(loss.detach()) <= 8


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_platform_variant_is_unchanged(method):
    cfg = PretrainConfig.from_args(["--data", "unused", "--method", method])
    m = build_module(cfg)
    assert (cfg.baseline_variant, cfg.moco_queue, cfg.momentum) == ("platform", 4096, 0.99)
    assert isinstance(m.projector, nn.Sequential)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["moco", "byol"])
def test_paper_variant_trains_on_two_workers_with_falling_loss(ludb_train_data, tmp_path,
                                                              method):
    """MoCo's loss starts near 0 (key encoder = query encoder, queue of random unit vectors) and
    rises while real keys fill the queue; so MoCo runs with a queue of 2 steps' keys and its loss
    is compared from the first step that sees only real negatives (step 2)."""
    import json

    from clef_platform.train.run import run_pretraining

    cfg = PretrainConfig.from_args([
        "--scale", "small", "--method", method, "--baseline-variant", "paper",
        "--data", ludb_train_data["data"], "--storage", str(tmp_path / "runs"),
        "--run-name", method, "--workers", "2", "--batch-per-worker", "8", "--steps", "8",
        "--lr", "1e-3", "--checkpoint-every", "8", "--cpus-per-worker", "1",
        "--data.loader_workers", "1", *(["--moco-queue", "32"] if method == "moco" else [])])
    trace = tmp_path / "trace"
    res = run_pretraining(cfg, trace_dir=str(trace), trace_steps=8)
    assert res.error is None and res.metrics["step"] == 8
    losses = [json.loads((trace / f"rank0_step{s}_micro0.json").read_text())["loss"]
              for s in range(8)]
    assert all(np.isfinite(losses)), losses
    first = 2 if method == "moco" else 0
    assert np.mean(losses[-2:]) < losses[first], losses
