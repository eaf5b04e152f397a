"""FLOP count of the Net1D encoder, for model FLOP utilisation (MFU).

Convention: FLOP = 2 x multiply-adds of the encoder's conv and linear layers (biases,
activations, pooling and SE scaling are left out: they are a rounding error next to the convs
and counting them would make the figure depend on kernel fusion). One training step costs
3 x forward (backward computes gradients with respect to both inputs and weights).

`encoder_flops` walks the config without building the model, so it is free at any scale;
`hooked_flops` counts what a real forward pass does (forward hooks on every Conv1d and Linear)
and is the check that the walk matches the module.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clef_model.net1d import KERNEL_SIZE, SE_REDUCTION, STRIDE, SCALES, EncoderConfig, Net1D

TRAIN_FLOP_FACTOR = 3  # forward + backward (input and weight gradients)


def _conv_macs(in_ch: int, out_ch: int, kernel: int, groups: int, out_len: int) -> int:
    return out_len * out_ch * (in_ch // groups) * kernel


def encoder_flops(config: EncoderConfig | str, length: int) -> int:
    """Forward FLOP of one view of `length` samples through the encoder."""
    if isinstance(config, str):
        if config not in SCALES:
            raise ValueError(f"unknown encoder scale {config!r}; expected one of {sorted(SCALES)}")
        config = SCALES[config]
    if length < 1:
        raise ValueError(f"view length must be positive, got {length}")
    t = math.ceil(length / STRIDE)
    macs = _conv_macs(config.in_channels, config.base_filters, KERNEL_SIZE, 1, t)
    in_ch = config.base_filters
    for out_ch, n_blocks in zip(config.filter_list, config.m_blocks_list):
        groups = out_ch // config.groups_width
        mid = int(out_ch * config.ratio)
        for j in range(n_blocks):
            block_in = in_ch if j == 0 else out_ch
            macs += _conv_macs(block_in, mid, 1, 1, t)  # conv1 runs before the stride
            if j == 0:
                t = math.ceil(t / STRIDE)
            macs += _conv_macs(mid, mid, KERNEL_SIZE, groups, t)
            macs += _conv_macs(mid, out_ch, 1, 1, t)
            se = out_ch // SE_REDUCTION
            macs += out_ch * se + se * out_ch  # the two SE linears, once per view
        in_ch = out_ch
    return 2 * macs


def train_step_flops(config: EncoderConfig | str, length: int, views: int) -> int:
    """Training FLOP for `views` views (a step's global batch x views per record)."""
    return TRAIN_FLOP_FACTOR * views * encoder_flops(config, length)


def hooked_flops(model: Net1D, length: int) -> int:
    """Forward FLOP of one view counted from the module's real Conv1d/Linear calls.

    Runs on the meta device when the model is there (no memory, any scale).
    """
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv1d):
            per_out = (module.in_channels // module.groups) * module.kernel_size[0]
            total += 2 * output.numel() * per_out
        else:
            total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Linear))]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, length, device=device))
    finally:
        for h in handles:
            h.remove()
    return total
