"""Autograd-aware collectives for the objectives (pure torch.distributed; works on gloo and nccl).

Gradient convention. Each rank returns a loss L_k whose *gradient* is world_size * (its share of
the global loss), where the shares sum to the global loss L. The collectives below route gradient
to the rank that owns each input by summing over ranks in backward, so the local inputs receive
sum_k dL_k/dx = world_size * dL/dx. The usual data-parallel averaging (all_reduce sum / world_size)
then yields exactly dL/dparam, as if one process had seen the concatenated batch.

Plain `dist.all_gather` returns tensors detached from the graph (gradients silently lost), hence
the small autograd Functions here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Comm:
    """Where this process sits in the global batch: rank, world size and every rank's row count."""

    rank: int = 0
    world: int = 1
    sizes: tuple[int, ...] = ()
    group: object = None

    @property
    def offset(self) -> int:
        """Global index of this rank's first row."""
        return sum(self.sizes[: self.rank])

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def distributed(self) -> bool:
        return self.world > 1


def is_distributed(group=None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def comm_for(n_local: int, group=None) -> Comm:
    """Comm for a local batch of n_local rows; gathers every rank's size when distributed."""
    if not is_distributed(group):
        return Comm(0, 1, (n_local,), None)
    world = dist.get_world_size(group)
    n = torch.tensor([n_local], dtype=torch.int64, device=_device(group))
    out = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(out, n, group=group)
    return Comm(dist.get_rank(group), world, tuple(int(t.item()) for t in out), group)


def _device(group=None) -> torch.device:
    # nccl needs CUDA tensors even for metadata; gloo works on CPU.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_padded(x: torch.Tensor, sizes, group) -> torch.Tensor:
    # all_gather needs equal shapes: pad every rank to the largest batch, then drop the padding.
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows (uneven sizes: pad to the largest, gather, slice).

    Backward: the global gradient of the gathered tensor is the sum of all ranks' upstream
    gradients (each rank's loss used every rank's rows); each rank keeps its own slice.
    """

    @staticmethod
    def forward(ctx, x, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x (same y everywhere). Backward: dx_j = sum over ranks of dL_k/dy."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def gather_rows(x: torch.Tensor, comm: Comm) -> torch.Tensor:
    """[n_local, ...] -> [sum(sizes), ...] in rank order, differentiable (see module docstring)."""
    if not comm.distributed:
        return x
    if not x.requires_grad:  # metadata: no graph needed
        return _gather_padded(x, comm.sizes, comm.group)
    return _GatherRows.apply(x, comm.sizes, comm.rank, comm.group)


def all_reduce_sum(x: torch.Tensor, comm: Comm) -> torch.Tensor:
    """Differentiable sum over ranks."""
    if not comm.distributed:
        return x
    return _AllReduceSum.apply(x, comm.group)


def global_extreme(x: torch.Tensor, comm: Comm, largest: bool) -> torch.Tensor:
    """max (or min) of x over all ranks' elements, with torch.amax/amin's gradient.

    torch.amax over one tensor splits the gradient evenly among tied maxima. Distributed: find
    the value (all_reduce MAX/MIN, no gradient), count the ties globally, and let each rank
    contribute sum(its tied entries) / count through a differentiable all-reduce; the forward value
    is the exact reduced value (straight-through), the gradient is that of the tie average.
    """
    if not comm.distributed:
        return x.amax() if largest else x.amin()
    xd = x.detach()
    fill = float("-inf") if largest else float("inf")
    v = (xd.amax() if largest else xd.amin()) if xd.numel() else xd.new_tensor(fill)
    dist.all_reduce(v, op=dist.ReduceOp.MAX if largest else dist.ReduceOp.MIN, group=comm.group)
    tied = xd == v
    count = tied.sum().to(x.dtype)
    dist.all_reduce(count, op=dist.ReduceOp.SUM, group=comm.group)
    part = all_reduce_sum(torch.where(tied, x, 0).sum() / count, comm)
    return v + (part - part.detach())


def global_value(share: torch.Tensor, comm: Comm) -> torch.Tensor:
    """Turn this rank's share of the global loss into the loss it returns.

    Forward value: the global loss (sum of shares), identical on every rank.
    Gradient: world_size * d(share), so that gradient averaging over ranks is exact.
    """
    if not comm.distributed:
        return share
    total = share.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=comm.group)
    scaled = share * comm.world
    return scaled + (total - scaled).detach()
