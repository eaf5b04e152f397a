"""The learning-rate schedules (one copy for the distributed and the single-process loop).

Both are LambdaLR multipliers of the peak lr as pure functions of the optimiser step, so a
scheduler's state dict holds only numbers (checkpoint-safe) and resuming at step s gives the lr
of step s.

- `warmup_cosine` (recipe `scaled`): per step, linear warmup then cosine to min_ratio.
- `cosine_restarts` (recipe `paper`): torch's CosineAnnealingWarmRestarts as the release drives
  it, stepped once per epoch (Lightning `interval: "epoch"`, lightning_contrastive.py:381-388):
  during epoch e (0-based) every step uses the value at e.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr after `step` optimiser steps: linear warmup, then cosine to
    `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_restarts_lr(epoch: int, base_lr: float, t0: int, mult: int, eta_min: float) -> float:
    """CosineAnnealingWarmRestarts' lr at integer epoch `epoch`: cycles of t0, t0*mult, ...
    epochs, each a half cosine from base_lr to eta_min (integer arithmetic for the cycle, so no
    log rounding at a restart)."""
    t_cur, t_i = epoch, t0
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= mult
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def build_scheduler(optimizer, warmup: int, total: int, min_ratio: float, *,
                    schedule: str = "warmup-cosine", steps_per_epoch: int = 1,
                    restart_epochs: int = 10, restart_mult: int = 2, eta_min: float = 0.0):
    """A LambdaLR of the chosen schedule."""
    import torch

    if schedule == "warmup-cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, warmup, total, min_ratio))
    if schedule == "cosine-restarts":
        base = optimizer.param_groups[0]["lr"]
        spe = max(1, steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_restarts_lr(s // spe, base, restart_epochs, restart_mult,
                                                    eta_min) / base)
    raise ValueError(f"optim.schedule must be warmup-cosine or cosine-restarts, got {schedule!r}")
