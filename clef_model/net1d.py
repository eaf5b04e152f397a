"""The CLEF encoder: Net1D, a 1-D ResNeXt with squeeze-and-excitation.

Mirrors the encoder of the released CLEF checkpoints (docs: ../shared/reference/net1d.md) so
that their weights load by name and give the same embeddings. Parameter names equal the released
`backbone.*` keys without the prefix.

The released models were trained with use_bn=False and use_do=False, so the forward pass uses no
BatchNorm and no dropout. The BatchNorm modules (first_bn, bn1, bn2, bn3) are still built: they
are part of the released state dicts and of the published parameter totals. Because they are
real `nn.BatchNorm1d` modules our state_dict() equals the released listing exactly, including
the `num_batches_tracked` buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KERNEL_SIZE = 16  # every grouped conv and the first conv
STRIDE = 2  # first block of every stage, and the first conv
SE_REDUCTION = 2


@dataclass(frozen=True)
class EncoderConfig:
    base_filters: int
    ratio: float
    filter_list: tuple[int, ...]
    m_blocks_list: tuple[int, ...]
    groups_width: int
    in_channels: int = 1
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        # Tuples, so configs compare equal after a JSON round trip (which yields lists).
        object.__setattr__(self, "filter_list", tuple(int(f) for f in self.filter_list))
        object.__setattr__(self, "m_blocks_list", tuple(int(m) for m in self.m_blocks_list))
        if len(self.filter_list) != len(self.m_blocks_list):
            raise ValueError("filter_list and m_blocks_list must have the same length")
        for f in self.filter_list:
            if f % self.groups_width:
                raise ValueError(f"filter {f} is not a multiple of groups_width {self.groups_width}")

    @property
    def embedding_dim(self) -> int:
        return self.filter_list[-1]


def min_input_length(config: EncoderConfig) -> int:
    """The shortest input every stage still sees: the product of the strides (the first conv
    and the first block of every stage halve the length). Shorter inputs end in an empty last
    stage. (The receptive field of the k16 chain proper is longer than a 10 s view at every
    scale, so it cannot be the bar.)"""
    return STRIDE ** (1 + len(config.filter_list))


SCALES: dict[str, EncoderConfig] = {
    "small": EncoderConfig(
        base_filters=32, ratio=0.5,
        filter_list=(32, 64, 64, 128, 128, 256),
        m_blocks_list=(1, 1, 2, 2, 2, 2),
        groups_width=8,
    ),
    "medium": EncoderConfig(
        base_filters=64, ratio=1.0,
        filter_list=(64, 160, 160, 400, 400, 1024, 1024),
        m_blocks_list=(2, 2, 2, 3, 3, 4, 4),
        groups_width=16,
    ),
    "large": EncoderConfig(
        base_filters=128, ratio=1.5,
        filter_list=(128, 256, 256, 512, 512, 1024, 1024, 2048, 2048),
        m_blocks_list=(2, 3, 3, 4, 4, 5, 5, 6, 6),
        groups_width=32,
    ),
}


def swish(x: torch.Tensor) -> torch.Tensor:
    # x * sigmoid(x); F.silu is the same function as one fused kernel.
    return F.silu(x)


class ConvSame(nn.Module):
    """Conv1d with TensorFlow-style "same" padding: out = ceil(T / s), extra pad on the right."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        out_len = math.ceil(t / self.stride)
        p = max(0, (out_len - 1) * self.stride + self.kernel_size - t)
        if p:
            x = F.pad(x, (p // 2, p - p // 2))
        return self.conv(x)


class Block(nn.Module):
    """Bottleneck block: [swish] -> 1x1 -> grouped k16 -> 1x1 -> SE, plus a shortcut."""

    def __init__(self, in_ch: int, out_ch: int, ratio: float, groups: int, stride: int,
                 is_first_block: bool):
        super().__init__()
        mid = int(out_ch * ratio)
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.is_first_block = is_first_block
        # Registration order follows the released state dict (bn1, conv1, bn2, conv2, bn3, ...).
        self.bn1 = nn.BatchNorm1d(in_ch)  # unused (use_bn=False)
        self.conv1 = ConvSame(in_ch, mid, 1)
        self.bn2 = nn.BatchNorm1d(mid)  # unused
        self.conv2 = ConvSame(mid, mid, KERNEL_SIZE, stride=stride, groups=groups)
        self.bn3 = nn.BatchNorm1d(mid)  # unused
        self.conv3 = ConvSame(mid, out_ch, 1)
        self.se_fc1 = nn.Linear(out_ch, out_ch // SE_REDUCTION)
        self.se_fc2 = nn.Linear(out_ch // SE_REDUCTION, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.is_first_block else swish(x)
        out = swish(self.conv1(out))
        out = swish(self.conv2(out))
        out = self.conv3(out)

        se = torch.sigmoid(self.se_fc2(swish(self.se_fc1(out.mean(-1)))))
        out = out * se.unsqueeze(-1)

        identity = x
        if self.stride > 1:
            # Max-pool of kernel 2 after one zero on the right: length ceil(T / 2) like conv2.
            # The zero takes part in the max, as in the reference implementation.
            identity = F.max_pool1d(F.pad(identity, (0, self.stride - 1)), self.stride)
        if self.out_ch != self.in_ch:
            # (All released scales have even differences, so the split is symmetric there.)
            extra = self.out_ch - self.in_ch
            identity = F.pad(identity, (0, 0, extra // 2, extra - extra // 2))
        # Out of place: under autocast `out` may be bf16 while the identity is fp32.
        return out + identity


class Stage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, ratio: float, groups: int,
                 is_first_stage: bool):
        super().__init__()
        self.block_list = nn.ModuleList(
            Block(in_ch if j == 0 else out_ch, out_ch, ratio, groups,
                  stride=STRIDE if j == 0 else 1,
                  is_first_block=is_first_stage and j == 0)
            for j in range(n_blocks)
        )


class Net1D(nn.Module):
    """[B, in_channels, T] -> [B, filter_list[-1]] (mean over time of the last stage)."""

    def __init__(self, config: EncoderConfig, scale: str | None = None):
        super().__init__()
        self.config = config
        self.scale = scale  # the SCALES name this was built from, written into exports
        self.activation_checkpointing = config.activation_checkpointing
        self.first_conv = ConvSame(config.in_channels, config.base_filters, KERNEL_SIZE, STRIDE)
        self.first_bn = nn.BatchNorm1d(config.base_filters)  # unused (use_bn=False)
        in_ch = config.base_filters
        stages = []
        for i, (out_ch, n_blocks) in enumerate(zip(config.filter_list, config.m_blocks_list)):
            stages.append(Stage(in_ch, out_ch, n_blocks, config.ratio,
                                groups=out_ch // config.groups_width, is_first_stage=i == 0))
            in_ch = out_ch
        self.stage_list = nn.ModuleList(stages)

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = swish(self.first_conv(x))
        # Recompute each block in backward instead of storing its activations: trades ~1/3 more
        # compute for memory that no longer grows with depth (needed for large on GPUs).
        use_ckpt = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stage_list:
            for block in stage.block_list:
                out = checkpoint(block, out, use_reentrant=False) if use_ckpt else block(out)
        return out.mean(-1)

    def unused_state_keys(self) -> list[str]:
        """State-dict keys of the BatchNorm modules that forward never uses."""
        return [f"{name}.{k}" for name, m in self.named_modules()
                if isinstance(m, nn.BatchNorm1d) for k in m.state_dict()]

    def num_parameters(self, include_unused_bn: bool = True) -> int:
        """Parameter count; with the unused BatchNorm it matches the published totals."""
        skip = set() if include_unused_bn else {
            id(p) for m in self.modules() if isinstance(m, nn.BatchNorm1d) for p in m.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


def build_encoder(scale: str, *, in_channels: int = 1,
                  activation_checkpointing: bool = False) -> Net1D:
    """A freshly initialised CLEF encoder of scale "small", "medium" or "large".

    Build under `with torch.device("meta"):` to inspect a scale without allocating it.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown encoder scale {scale!r}; expected one of {sorted(SCALES)}")
    config = replace(SCALES[scale], in_channels=in_channels,
                     activation_checkpointing=activation_checkpointing)
    return Net1D(config, scale=scale)
