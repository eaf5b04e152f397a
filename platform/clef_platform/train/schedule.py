"""The learning-rate schedule (one copy for the distributed and the single-process loop)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr after `step` optimiser steps: linear warmup, then cosine to
    `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, warmup: int, total: int, min_ratio: float):
    """A LambdaLR of `warmup_cosine` (its state dict holds only numbers: checkpoint-safe)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup, total, min_ratio))
