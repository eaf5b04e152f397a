"""Distributed exactness: gloo on CPU, world sizes 1, 2, 4, uneven per-rank batches, float64.

Each rank computes z = x_local @ W with W replicated, calls the loss, backpropagates, and
all_reduce-averages W.grad as data-parallel training does. The loss value (on every rank) and
the averaged W.grad must match the single-process loss on the concatenated batch; the local
z.grad must equal world_size x the single-process gradient of those rows (the documented
gradient convention), and only a [2 n_local, 2 B] logits block may be materialised.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clef_model.loss import MoCoQueue, clef_loss, info_nce
from tests.helpers import free_port

SIZES = {1: [16], 2: [3, 5], 4: [3, 5, 2, 6]}
CASES = ("clef", "clef_missing", "info_nce")


def _data(B, feat=6, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64, generator=g)
    x1 = torch.randn(B, feat, **f64)
    x2 = x1 + 0.5 * torch.randn(B, feat, **f64)
    W = torch.randn(feat, dim, **f64)
    risk = 0.4 * torch.rand(B, **f64)
    risk[1] = float("nan")
    missing = torch.randint(0, 8, (B,), generator=g).to(torch.float64) / 7
    return x1, x2, W, risk, missing


def _run(case, x1, x2, W, risk, missing, diagnostics=None):
    """Loss and gradients for one case; W is replicated, z1/z2 are this process's rows."""
    W = W.clone().requires_grad_(True)
    z1, z2 = x1 @ W, x2 @ W
    z1.retain_grad()
    z2.retain_grad()
    if case == "info_nce":
        loss = info_nce(z1, z2, diagnostics=diagnostics)
    else:
        loss = clef_loss(z1, z2, risk, missing if case == "clef_missing" else None, diagnostics=diagnostics)
    loss.backward()
    return loss.detach(), W.grad, z1.grad, z2.grad


def _worker(rank, world, port, sizes, data, refs):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x1, x2, W, risk, missing = data
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        B = sum(sizes)
        for case in CASES:
            diag = {}
            loss, gW, g1, g2 = _run(case, x1[lo:hi], x2[lo:hi], W, risk[lo:hi], missing[lo:hi], diag)
            dist.all_reduce(gW)  # data-parallel averaging of the replicated parameter's gradient
            gW /= world
            ref_loss, ref_gW, ref_g1, ref_g2 = refs[case]
            torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6, msg=f"{case} loss, rank {rank}")
            torch.testing.assert_close(gW, ref_gW, rtol=0, atol=1e-5, msg=f"{case} W.grad, rank {rank}")
            torch.testing.assert_close(g1 / world, ref_g1[lo:hi], rtol=0, atol=1e-5, msg=f"{case} z1.grad")
            torch.testing.assert_close(g2 / world, ref_g2[lo:hi], rtol=0, atol=1e-5, msg=f"{case} z2.grad")
            assert diag["logits_shape"] == (2 * (hi - lo), 2 * B), (case, diag)

        # MoCo: every rank enqueues the keys of all ranks, in rank order, so queues stay equal.
        torch.manual_seed(0)  # same initial queue everywhere
        queue = MoCoQueue(dim=3, size=64).double()
        keys = torch.arange(B * 3, dtype=torch.float64).reshape(B, 3) + 1
        queue.enqueue(keys[lo:hi])
        assert int(queue.ptr) == B
        torch.testing.assert_close(queue.keys[:B], F.normalize(keys, dim=1))
    finally:
        dist.destroy_process_group()



@pytest.mark.parametrize("world", sorted(SIZES))
def test_distributed_losses_match_single_process(world):
    sizes = SIZES[world]
    data = _data(sum(sizes))
    x1, x2, W, risk, missing = data
    refs = {case: _run(case, x1, x2, W, risk, missing) for case in CASES}  # not distributed here
    mp.spawn(_worker, args=(world, free_port(), sizes, data, refs), nprocs=world, join=True)
