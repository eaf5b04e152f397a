"""Pretraining objectives: CLEF's risk-weighted contrastive loss, SimCLR NT-Xent, BYOL, MoCo v2.

`clef_loss` and `info_nce` are distributed-exact. Inside an initialised torch.distributed group
of world size P > 1, every rank gathers the (L2-normalised) embeddings of all ranks with
gradients, plus the metadata, and materialises only its own rows against all columns:
a [2n_local, 2B] block, never the [2B, 2B] matrix. Normalisations that span rows (min-max of
Delta, min-max of S) are reduced over ranks; row-wise ones (softmax, row max) are local because
each local row sees every column. Each rank's returned loss has the forward value of the global
loss and the gradient of P * (its share), so that after data-parallel gradient averaging
(all_reduce sum / P) gradients equal those of the single-process loss on the concatenated batch
(see clef_model/distributed.py). Uneven per-rank batch sizes are supported.

Global view layout (as in clef-objective.md): Z = concat(z1_all, z2_all) [2B, D], rows in rank
order within each half; row a's positive is p(a) = (a + B) mod 2B.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from clef_model.distributed import (
    Comm,
    comm_for,
    gather_rows,
    global_extreme,
    global_value,
)

__all__ = [
    "clef_loss",
    "info_nce",
    "byol_loss",
    "moco_loss",
    "MoCoQueue",
    "make_target",
    "momentum_update",
]


# ------------------------------------------------------------------ shared layout


def _similarity(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Cosine-similarity block S[a, b] = rows_a . cols_b (inputs already L2-normalised)."""
    return rows @ cols.T


def _block(z1: torch.Tensor, z2: torch.Tensor, comm: Comm):
    """Local rows [2n, D] vs all columns [2B, D]; returns S [2n, 2B] and, per local row, its
    global row index and its positive's column index."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be [n, D], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    h1, h2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    cols = torch.cat([gather_rows(h1, comm), gather_rows(h2, comm)])  # global Z, rank order
    rows = torch.cat([h1, h2])  # this rank's rows of Z (first half, then second half)
    B, n = comm.total, z1.shape[0]
    own = torch.arange(n, device=z1.device) + comm.offset
    row_ids = torch.cat([own, own + B])
    pos_ids = (row_ids + B) % (2 * B)
    return _similarity(rows, cols), row_ids, pos_ids


def _index_mask(ids: torch.Tensor, width: int) -> torch.Tensor:
    """Bool [len(ids), width], True at (a, ids[a])."""
    return ids[:, None] == torch.arange(width, device=ids.device)[None, :]


# ------------------------------------------------------------------ CLEF


def clef_loss(z1, z2, risk, missing=None, temperature=0.07, *, group=None, diagnostics=None):
    """CLEF objective (clef-objective.md), for B patients (global batch), views z1, z2 [n, D].

    Z = concat(z1, z2) row-normalised, S = Z Z^T [2B, 2B], p(a) = (a + B) mod 2B.
      Delta_ij = (r_i - r_j)^2,  Delta_n = (Delta - min Delta) / (max Delta - min Delta + 1e-6)
      D = 0.8 Delta_n + 0.2,  D_ii = 0,  with m: D_ij *= exp(-m_i m_j);  M = 1 - D tiled to 2B x 2B
      W_a. = softmax_b(1 - M_ab) over all 2B columns (diagonal dropped afterwards)
      l_ab = S_ab / t - max_{b' != a} S_ab' / t  (b != a),  e = exp(l)
      nce_a = -log(e_a,p(a) / (e_a,p(a) + sum_{b != a, p(a)} W_ab e_ab + 1e-8))
      S_n = (S - min S) / (max S - min S + 1e-6)  (whole matrix, diagonal included)
      align = mean_ab (S_n - M)_ab^2
      loss = (mean_a nce_a + align) / 2
    risk [n]: SCORE2 risk, NaN (missing) counts as 0. missing [n]: fraction of the risk's inputs
    that were missing (None = none missing). Distributed: see the module docstring.
    diagnostics: optional dict, filled with the shape of the materialised logits block.
    """
    return _clef(z1, z2, risk, missing, temperature, comm_for(z1.shape[0], group), diagnostics)


def _clef(z1, z2, risk, missing, temperature, comm: Comm, diagnostics=None):
    S, row_ids, pos_ids = _block(z1, z2, comm)  # [2n, 2B]
    if diagnostics is not None:
        diagnostics.update(logits_shape=tuple(S.shape), global_batch=comm.total)
    n, B, dt = z1.shape[0], comm.total, S.dtype

    # Metadata: gather (risk, missing) of every patient; no gradient flows into it.
    r = torch.as_tensor(risk, dtype=dt, device=S.device).detach().reshape(n)
    r = torch.nan_to_num(r, nan=0.0)  # a missing risk counts as 0
    m = torch.zeros_like(r) if missing is None else torch.as_tensor(missing, dtype=dt, device=S.device).detach().reshape(n)
    r_all, m_all = gather_rows(torch.stack([r, m], 1), comm).unbind(1)  # [B] each

    # 1. Risk dissimilarity, this rank's patients (rows) vs all patients (columns): [n, B].
    # Over the whole B x B matrix, min Delta = 0 (the diagonal) and max Delta = (max r - min r)^2
    # (attained at the extreme pair; exact in floating point because rounding is monotone), so
    # the global min-max needs no other rank's block.
    delta = (r[:, None] - r_all[None, :]) ** 2
    d_min, d_max = 0.0, (r_all.max() - r_all.min()) ** 2
    D = 0.8 * (delta - d_min) / (d_max - d_min + 1e-6) + 0.2
    own = torch.arange(n, device=S.device)
    D[own, own + comm.offset] = 0.0  # D_ii = 0
    D = D * torch.exp(-m[:, None] * m_all[None, :])

    # 2. Risk similarity, tiled: local rows (first half, second half) x all 2B columns.
    M = 1.0 - D.repeat(2, 2)

    # 3. Negative weights: softmax over the full row (all 2B columns, diagonal included).
    W = torch.softmax(1.0 - M, dim=1)

    # 4. Weighted InfoNCE. The diagonal is dropped (-inf logit, exp = 0) before the row max.
    diag, pos = _index_mask(row_ids, 2 * B), _index_mask(pos_ids, 2 * B)
    logits = (S / temperature).masked_fill(diag, float("-inf"))
    logits = logits - logits.amax(dim=1, keepdim=True)
    e = logits.exp()
    e_pos = e.gather(1, pos_ids[:, None]).squeeze(1)
    neg = (W * e).masked_fill(diag | pos, 0.0).sum(1)
    # -log(e_pos / (e_pos + neg + 1e-8)) with -log(e_pos) written as -logit_pos (no underflow).
    nce = torch.log(e_pos + neg + 1e-8) - logits.gather(1, pos_ids[:, None]).squeeze(1)

    # 5. Alignment: min-max of S over the whole global matrix (reduced across ranks).
    s_min, s_max = global_extreme(S, comm, largest=False), global_extreme(S, comm, largest=True)
    S_n = (S - s_min) / (s_max - s_min + 1e-6)
    align_sum = ((S_n - M) ** 2).sum()

    # 6. This rank's share of (mean_a nce_a + mean_ab align_ab) / 2, global denominators.
    share = (nce.sum() / (2 * B) + align_sum / (2 * B) ** 2) / 2
    return global_value(share, comm)


# ------------------------------------------------------------------ SimCLR


def info_nce(z1, z2, temperature=0.07, *, group=None, diagnostics=None):
    """SimCLR NT-Xent over the 2B views of the global batch:
    loss = mean_a [ -S_a,p(a) / t + log sum_{b != a} exp(S_ab / t) ], S the cosine similarity.
    Distributed-exact like clef_loss (module docstring)."""
    comm = comm_for(z1.shape[0], group)
    S, row_ids, pos_ids = _block(z1, z2, comm)
    if diagnostics is not None:
        diagnostics.update(logits_shape=tuple(S.shape), global_batch=comm.total)
    logits = (S / temperature).masked_fill(_index_mask(row_ids, S.shape[1]), float("-inf"))
    nce = torch.logsumexp(logits, dim=1) - logits.gather(1, pos_ids[:, None]).squeeze(1)
    return global_value(nce.sum() / (2 * comm.total), comm)


# ------------------------------------------------------------------ BYOL


def byol_loss(p1, p2, t1, t2):
    """BYOL, symmetrised: mean_i ( ||p1_i^ - t2_i^||^2 + ||p2_i^ - t1_i^||^2 ),
    where x^ = x / ||x||, so each term is 2 - 2 cos; p = online predictions, t = target
    projections (stop-gradient). Per-sample, so data-parallel averaging is exact for equal
    per-rank batches."""

    def regress(p, t):
        return 2.0 - 2.0 * F.cosine_similarity(p, t.detach(), dim=-1)

    return (regress(p1, t2) + regress(p2, t1)).mean()


# ------------------------------------------------------------------ MoCo v2


class MoCoQueue(nn.Module):
    """MoCo's dictionary: a ring buffer of K L2-normalised keys [K, D] (module buffers, so they
    are saved with the state dict and follow .to(device)).

    Call `enqueue(k)` exactly once per training step, after the loss (the loss reads a copy of
    the queue as it was at the start of the step). When distributed, the keys of all ranks are
    gathered and enqueued on every rank, so all ranks keep the same queue.
    """

    def __init__(self, dim: int, size: int = 65536):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        # A copy: enqueue() writes in place, and autograd saved the negatives for backward.
        return self.keys.detach().clone()

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor, group=None) -> None:
        k = F.normalize(k.detach().to(self.keys.dtype), dim=1)
        k = gather_rows(k, comm_for(k.shape[0], group))
        size = self.keys.shape[0]
        k = k[-size:]  # a batch larger than the queue keeps its newest keys
        idx = (self.ptr + torch.arange(k.shape[0], device=k.device)) % size
        self.keys[idx] = k
        self.ptr.copy_((self.ptr + k.shape[0]) % size)


def moco_loss(q, k, queue, temperature=0.2):
    """MoCo v2 InfoNCE: q [n, D] queries (online), k [n, D] keys (momentum encoder, no gradient),
    queue [K, D] negatives (a MoCoQueue or a tensor):
    loss = mean_i -log( exp(q_i^.k_i^/t) / (exp(q_i^.k_i^/t) + sum_j exp(q_i^.n_j/t)) )."""
    negatives = queue.negatives() if isinstance(queue, MoCoQueue) else queue.detach().clone()
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.to(q.dtype).T], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


# ------------------------------------------------------------------ momentum encoders


def make_target(online: nn.Module) -> nn.Module:
    """The momentum (target / key) encoder: a frozen copy of the online encoder."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """EMA of the parameters, theta_t <- m theta_t + (1 - m) theta_o. The platform's baselines
    use m = 0.99 (config `momentum`); the release's, m = 0.996 (BYOL) and 0.999 (MoCo),
    with `--baseline-variant paper`. Buffers (BatchNorm statistics) are left to the target's own forward passes,
    as in the MoCo reference code."""
    for pt, po in zip(target.parameters(), online.parameters(), strict=True):
        pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)
