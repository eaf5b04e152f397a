"""Named training recipes, layered between the scale's preset and the user's --config / options.

    preset(scale) -> recipe -> --config YAML -> options -> resolve()

- `scaled` (default): the platform's presets (train/config.py PRESETS: warmup + per-step cosine,
  clipping at 1.0, decay on weights only, bf16 on GPU) with the learning rate following the global
  batch: lr = preset lr x sqrt(global batch / reference batch) (or linear, or none;
  `optim.lr_scaling`). The reference batch is the global batch the preset's lr was set for. Square
  root, not linear: AdamW's effective step grows with the batch roughly as its gradient noise
  falls, i.e. with sqrt(B); linear scaling is for SGD and overshoots with Adam at large batches.
- `paper`: the authors' release exactly, at every scale (docs/reproducing.md cites each value):
  global batch 64 split over the workers, no lr scaling, AdamW 1e-4, weight decay 5e-4 on every
  parameter, CosineAnnealingWarmRestarts (T_0 = 10 epochs, T_mult = 2, eta_min = 1e-6) stepped
  per epoch, 100 epochs, fp32, no clipping, early stopping on the training loss (patience 20,
  min_delta 1e-4).

A value the user gives (YAML or option) always wins over the recipe, and is never rescaled.
"""

from __future__ import annotations

import json
import math
from typing import Any

from clef_platform.train.config import apply_overrides

# The release's global batch (configs/exp/exp_pretrain.yaml:4, one GPU): split over the workers.
PAPER_GLOBAL_BATCH = 64

# The release's baselines (clef/lightning/lightning_contrastive.py:73-74 and :88).
PAPER_MOCO_QUEUE = 65536
PAPER_MOMENTUM = {"moco": 0.999, "byol": 0.996}

RECIPES: dict[str, dict[str, Any]] = {
    "scaled": {
        "optim": {"schedule": "warmup-cosine", "decay_all": False, "lr_scaling": "sqrt"},
    },
    "paper": {
        "epochs": 100,
        "temperature": 0.07,
        "patience": 20,
        "patience_delta": 1e-4,
        "optim": {"lr": 1e-4, "weight_decay": 5e-4, "decay_all": True, "beta1": 0.9,
                  "beta2": 0.999, "eps": 1e-8, "schedule": "cosine-restarts",
                  "restart_epochs": 10, "restart_mult": 2, "eta_min": 1e-6, "warmup_steps": 0,
                  "grad_clip": 0.0, "grad_accum": 1, "lr_scaling": "none"},
        "deepspeed": {"precision": "fp32"},
        "data": {"order": "epoch"},
    },
}

# `scaled`: the global batch (x grad_accum) each preset's lr is defined at: small as the demo runs
# it (2 CPU workers x 64), medium and large on one 8-GPU node (8 x 256, large with 2 accumulation
# micro-steps).
SCALED_REFERENCE_BATCH = {"small": 128, "medium": 2048, "large": 4096}


def apply_recipe(cfg, name: str) -> None:
    """Layer recipe `name` over cfg (which holds the scale's preset)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {tuple(RECIPES)}")
    cfg.recipe = name
    apply_overrides(cfg, RECIPES[name])
    if name == "scaled":
        cfg.optim.reference_batch = SCALED_REFERENCE_BATCH[cfg.scale]


def explicit_keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of a nested override dict (what the user set)."""
    out: set[str] = set()
    for k, v in d.items():
        k = prefix + k.replace("-", "_")
        if isinstance(v, dict):
            out |= explicit_keys(v, k + ".")
        else:
            out.add(k)
    return out


def lr_factor(rule: str, global_batch: int, reference: int) -> float:
    if rule == "none" or reference <= 0:
        return 1.0
    ratio = global_batch / reference
    if rule == "sqrt":
        return math.sqrt(ratio)
    if rule == "linear":
        return ratio
    raise ValueError(f"optim.lr_scaling must be sqrt, linear or none, got {rule!r}")


def resolve(cfg, explicit: set[str]) -> None:
    """The recipe's derived values, after every layer: global batch split over the workers
    (paper), lr scaled with the global batch (scaled), --epochs xor --steps."""
    if "steps" in explicit and "epochs" in explicit:
        raise ValueError("give --steps or --epochs, not both")
    if "steps" in explicit:
        cfg.epochs = 0                       # the user's step budget replaces the recipe's epochs
        if "data.order" not in explicit and cfg.data.order == "epoch":
            cfg.data.order = "stream"
    elif cfg.epochs and "data.order" not in explicit:
        cfg.data.order = "epoch"
    if cfg.recipe == "paper" and "batch_per_worker" not in explicit:
        w = cfg.cluster.workers
        if PAPER_GLOBAL_BATCH % w:
            raise ValueError(f"recipe paper: its global batch of {PAPER_GLOBAL_BATCH} does not "
                             f"split over --workers {w}; use a divisor of {PAPER_GLOBAL_BATCH} "
                             f"or give --batch-per-worker")
        cfg.batch_per_worker = PAPER_GLOBAL_BATCH // w
    if cfg.baseline_variant == "paper":   # lightning_contrastive.py:73-74, :88
        if "moco_queue" not in explicit:
            cfg.moco_queue = PAPER_MOCO_QUEUE
        if "momentum" not in explicit and cfg.method in PAPER_MOMENTUM:
            cfg.momentum = PAPER_MOMENTUM[cfg.method]
    if "optim.lr" not in explicit:
        cfg.optim.lr = cfg.optim.lr * lr_factor(cfg.optim.lr_scaling, effective_batch(cfg),
                                                cfg.optim.reference_batch)


def effective_batch(cfg) -> int:
    return cfg.batch_per_worker * cfg.cluster.workers * cfg.optim.grad_accum


def describe(cfg) -> str:
    """One line for the run's log: recipe, global batch, lr and the rule that gave it."""
    o = cfg.optim
    gb = effective_batch(cfg)
    f = lr_factor(o.lr_scaling, gb, o.reference_batch)
    rule = (f"lr {o.lr:.4g} (no lr scaling)" if o.lr_scaling == "none" else
            f"lr {o.lr / f:.4g} x {o.lr_scaling}({gb}/{o.reference_batch}) = {o.lr:.4g}")
    budget = f"{cfg.epochs} epochs" if cfg.epochs else f"{cfg.steps} steps"
    return (f"recipe {cfg.recipe}: global batch {gb} ({cfg.cluster.workers} workers x "
            f"{cfg.batch_per_worker} x accum {o.grad_accum}), {rule}, "
            f"schedule {o.schedule}, weight decay {o.weight_decay:g} on "
            f"{'every parameter' if o.decay_all else 'weights only'}, clip {o.grad_clip:g}, "
            f"precision {cfg.deepspeed.precision}, {budget}"
            + (f", early stop patience {cfg.patience}" if cfg.patience else ""))


def describe_recipes() -> str:
    return json.dumps({"paper": {**RECIPES["paper"], "global_batch": PAPER_GLOBAL_BATCH},
                       "scaled": {**RECIPES["scaled"],
                                  "reference_batch": SCALED_REFERENCE_BATCH}}, indent=1)


class EarlyStopping:
    """Stop when the monitored loss has not fallen by more than `min_delta` for `patience`
    consecutive epochs (Lightning's EarlyStopping in mode 'min', as the release configures it:
    script/pretrain.py:62-68)."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.bad = math.inf, 0

    def update(self, loss: float) -> bool:
        """Feed one epoch's loss; True when training should stop."""
        if self.patience <= 0:
            return False
        if loss < self.best - self.min_delta:
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load(self, state: dict) -> None:
        self.best, self.bad = float(state["best"]), int(state["bad"])
