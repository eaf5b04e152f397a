"""Recipes (train/recipes.py) and schedules (train/schedule.py), no Ray: the paper recipe's
learning rate against torch's CosineAnnealingWarmRestarts, weight-decay groups on the real
CLEF-small module, the lr scaling rule, early stopping, --epochs xor --steps."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from clef_platform.train import recipes
from clef_platform.train.config import PretrainConfig
from clef_platform.train.engine import EngineConfig, build_optimizer, param_groups
from clef_platform.train.objectives import build_module

BASE = ["--data", "unused", "--features", "unused"]


def cfg_of(*argv) -> PretrainConfig:
    return PretrainConfig.from_args([*BASE, *argv])


def test_paper_lr_equals_torch_cosine_warm_restarts_per_epoch():
    """Steps inside epochs 1, 10, 11, 30 and 31 (1-based): our per-step LambdaLR equals torch's
    CosineAnnealingWarmRestarts(T_0=10, T_mult=2, eta_min=1e-6) stepped once per epoch, as
    Lightning's interval="epoch" drives it in the release."""
    cfg = cfg_of("--recipe", "paper")
    spe = 7
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimizer(torch.nn.ParameterList([p]), EngineConfig.from_pretrain(cfg, spe))
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(ref_opt, T_0=10, T_mult=2,
                                                               eta_min=1e-6)
    ours, theirs = {}, {}
    for step in range(31 * spe):
        epoch = step // spe
        ours[step] = opt.param_groups[0]["lr"]
        theirs[step] = ref_opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        if (step + 1) % spe == 0:
            ref_opt.step()
            ref.step()
    checked = 0
    for epoch_1based in (1, 10, 11, 30, 31):
        for within in (0, 3, spe - 1):
            s = (epoch_1based - 1) * spe + within
            assert ours[s] == pytest.approx(theirs[s], rel=1e-12, abs=1e-15), (epoch_1based, s)
            checked += 1
    assert checked == 15
    # the restarts really are there: back to the peak at epochs 11 and 31, near eta_min before
    assert ours[10 * spe] == pytest.approx(1e-4) and ours[30 * spe] == pytest.approx(1e-4)
    assert ours[30 * spe - 1] < 2e-6


@pytest.mark.parametrize("recipe", ["paper", "scaled"])
def test_weight_decay_groups_hold_every_parameter_once(recipe):
    cfg = cfg_of("--recipe", recipe)
    module = build_module(cfg)
    groups = param_groups(module, EngineConfig.from_pretrain(cfg))
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable) > 10
    assert set(ids) == {id(p) for p in trainable}
    if recipe == "paper":   # the release: AdamW(self.parameters(), weight_decay=5e-4)
        assert [g["weight_decay"] for g in groups] == [5e-4]
    else:
        decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        assert all((p.ndim > 1) == (id(p) in decayed) for p in trainable)


def test_paper_recipe_values_and_batch_split():
    c = cfg_of("--recipe", "paper", "--workers", "4")
    assert c.global_batch == 64 and c.batch_per_worker == 16
    o = c.optim
    assert (o.lr, o.weight_decay, o.decay_all, o.schedule, o.restart_epochs, o.restart_mult,
            o.eta_min, o.grad_clip, o.warmup_steps) == (1e-4, 5e-4, True, "cosine-restarts", 10,
                                                        2, 1e-6, 0.0, 0)
    assert (c.epochs, c.patience, c.patience_delta, c.deepspeed.precision, c.data.order) == (
        100, 20, 1e-4, "fp32", "epoch")
    assert not c.bf16
    # no lr scaling, whatever the workers: the same lr at 1, 2 and 8 workers
    assert {cfg_of("--recipe", "paper", "--workers", str(w)).optim.lr for w in (1, 2, 8)} == {1e-4}
    for scale in ("medium", "large"):   # every scale: the same recipe
        s = cfg_of("--recipe", "paper", "--scale", scale)
        assert (s.optim.lr, s.global_batch, s.optim.grad_accum) == (1e-4, 64, 1)


def test_scaled_lr_follows_the_documented_sqrt_rule_when_the_global_batch_doubles():
    two, four = cfg_of("--workers", "2"), cfg_of("--workers", "4")
    assert two.global_batch == 128 and four.global_batch == 256
    assert two.optim.lr == pytest.approx(1e-3)            # the small preset at its reference
    assert four.optim.lr == pytest.approx(1e-3 * 2 ** 0.5)
    bigger = cfg_of("--workers", "2", "--batch-per-worker", "128")
    assert bigger.optim.lr == pytest.approx(four.optim.lr)
    linear = cfg_of("--workers", "4", "--optim.lr_scaling", "linear")
    assert linear.optim.lr == pytest.approx(2e-3)
    # an lr the user gives is used as given, never rescaled
    assert cfg_of("--workers", "4", "--lr", "3e-4").optim.lr == 3e-4
    assert "sqrt(256/128)" in recipes.describe(four)


def test_early_stopping_stops_when_the_loss_stops_improving():
    es = recipes.EarlyStopping(patience=3, min_delta=1e-4)
    losses = [5.0, 4.0, 3.0, 2.99995, 2.9999, 3.1]   # after 3.0: no gain of more than 1e-4
    stops = [es.update(x) for x in losses]
    assert stops == [False, False, False, False, False, True]
    assert es.best == 3.0
    assert not any(recipes.EarlyStopping(0, 1e-4).update(1.0) for _ in range(50))


def _job(*argv):
    return subprocess.run([sys.executable, "jobs/pretrain.py", *BASE, *argv],
                          capture_output=True, text=True, timeout=120)


def test_cli_epochs_xor_steps_and_help_shows_recipes():
    both = _job("--epochs", "2", "--steps", "10")
    assert both.returncode == 2
    assert "give --steps or --epochs, not both" in both.stderr
    assert "Traceback" not in both.stderr
    odd = _job("--recipe", "paper", "--workers", "3")
    assert odd.returncode == 2 and "--workers 3" in odd.stderr.splitlines()[-1]
    h = _job("--help")
    assert h.returncode == 0
    for text in ("--epochs", "--recipe", '"restart_epochs": 10', '"eta_min": 1e-06',
                 '"weight_decay": 0.0005', '"global_batch": 64', '"reference_batch"'):
        assert text in h.stdout, text
    steps = cfg_of("--recipe", "paper", "--steps", "30")
    assert (steps.epochs, steps.steps, steps.data.order) == (0, 30, "stream")
