"""Objectives, single process: CLEF formula vs a naive reference, a hand-checked case, NT-Xent vs
cross-entropy, BYOL / MoCo v2 / EMA sanity."""

import math

import pytest
import torch
import torch.nn.functional as F

from clef_model.loss import (
    MoCoQueue,
    byol_loss,
    clef_loss,
    info_nce,
    make_target,
    moco_loss,
    momentum_update,
)


def naive_clef(z1, z2, risk, missing=None, t=0.07):
    """clef-objective.md, line by line, on the whole [2B, 2B] matrix (loops where the text loops)."""
    B = z1.shape[0]
    Z = torch.cat([z1, z2])
    Z = Z / Z.norm(dim=1, keepdim=True)
    S = Z @ Z.T
    r = torch.where(torch.isnan(risk), torch.zeros_like(risk), risk)  # missing risk counts as 0
    # 1. risk dissimilarity
    Delta = torch.zeros(B, B, dtype=Z.dtype)
    for i in range(B):
        for j in range(B):
            Delta[i, j] = (r[i] - r[j]) ** 2
    Delta_norm = (Delta - Delta.min()) / (Delta.max() - Delta.min() + 1e-6)
    D = 0.8 * Delta_norm + 0.2
    for i in range(B):
        D[i, i] = 0.0
    if missing is not None:
        for i in range(B):
            for j in range(B):
                D[i, j] = D[i, j] * math.exp(-float(missing[i]) * float(missing[j]))
    # 2. tiled risk similarity
    M = torch.zeros(2 * B, 2 * B, dtype=Z.dtype)
    for a in range(2 * B):
        for b in range(2 * B):
            M[a, b] = 1.0 - D[a % B, b % B]
    # 3. negative weights: softmax over the full row, then drop the diagonal
    off = ~torch.eye(2 * B, dtype=torch.bool)
    W = torch.softmax(1.0 - M, dim=1)[off].reshape(2 * B, 2 * B - 1)
    # 4. weighted InfoNCE
    logits = (S / t)[off].reshape(2 * B, 2 * B - 1)
    logits = logits - logits.max(dim=1, keepdim=True).values
    e = torch.exp(logits)
    nce = []
    for a in range(2 * B):
        p = (a + B) % (2 * B)
        col = p if p < a else p - 1  # column of p(a) once the diagonal is gone
        e_pos = e[a, col]
        neg = sum(W[a, c] * e[a, c] for c in range(2 * B - 1) if c != col)
        nce.append(-torch.log(e_pos / (e_pos + neg + 1e-8)))
    # 5. alignment
    S_norm = (S - S.min()) / (S.max() - S.min() + 1e-6)
    align = ((S_norm - M) ** 2).mean()
    # 6.
    return (torch.stack(nce).mean() + align) / 2


def _batch(B, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, D, generator=g, dtype=dtype)
    z2 = z1 + 0.7 * torch.randn(B, D, generator=g, dtype=dtype)  # correlated views
    risk = 0.4 * torch.rand(B, generator=g, dtype=dtype)
    missing = torch.randint(0, 8, (B,), generator=g).to(dtype) / 7
    return z1, z2, risk, missing


def _value_and_grads(fn, z1, z2, *args):
    z1 = z1.clone().requires_grad_(True)
    z2 = z2.clone().requires_grad_(True)
    loss = fn(z1, z2, *args)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_missing", [False, True])
def test_clef_matches_naive_reference(seed, with_missing):
    z1, z2, risk, missing = _batch(7, seed=seed)
    risk[3] = float("nan")  # a missing risk counts as 0
    m = missing if with_missing else None
    got = _value_and_grads(lambda a, b: clef_loss(a, b, risk, m), z1, z2)
    ref = _value_and_grads(lambda a, b: naive_clef(a, b, risk, m), z1, z2)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_clef_temperature_matches_reference():
    z1, z2, risk, missing = _batch(5, seed=4)
    for t in (0.07, 0.5):
        torch.testing.assert_close(clef_loss(z1, z2, risk, missing, temperature=t), naive_clef(z1, z2, risk, missing, t))


def test_clef_hand_checked_tiny_case():
    # B = 2, orthogonal patients, identical views: Z = [e1, e2, e1, e2], risk (0, 1).
    # Delta = [[0,1],[1,0]] -> D_01 = d = 0.8/(1+1e-6) + 0.2 (times exp(-m0 m1) with missing),
    # D_ii = 0. Every row: negatives (the other patient, both views) have logit -1/t after the
    # row max, weight e^d / (2 + 2 e^d) each (softmax over [0, d, 0, d]); the positive has 0.
    # S is 0/1, so S_norm = S / (1 + 1e-6); M is 1 (same patient) or 1 - d (other patient).
    t = 0.07
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    z = torch.stack([e1, e2])
    risk = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for m in (None, torch.tensor([1.0, 0.5], dtype=torch.float64)):
        d = (0.8 / (1 + 1e-6) + 0.2) * (1.0 if m is None else math.exp(-0.5))
        w = math.exp(d) / (2 + 2 * math.exp(d))
        nce = -math.log(1.0 / (1.0 + 2 * w * math.exp(-1 / t) + 1e-8))
        align = ((1 / (1 + 1e-6) - 1) ** 2 + (1 - d) ** 2) / 2
        expected = (nce + align) / 2
        assert clef_loss(z, z.clone(), risk, m).item() == pytest.approx(expected, rel=1e-12)


def test_missing_none_equals_zeros():
    z1, z2, risk, _ = _batch(9, seed=5)
    a = _value_and_grads(lambda x, y: clef_loss(x, y, risk, None), z1, z2)
    b = _value_and_grads(lambda x, y: clef_loss(x, y, risk, torch.zeros(9, dtype=torch.float64)), z1, z2)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_clef_uses_risk_and_missing():
    # Guards against a formula that silently ignores its metadata.
    z1, z2, risk, missing = _batch(8, seed=6)
    base = clef_loss(z1, z2, risk)
    assert not torch.isclose(base, clef_loss(z1, z2, risk.flip(0)), rtol=1e-9)
    assert not torch.isclose(base, clef_loss(z1, z2, risk, missing), rtol=1e-9)


def test_clef_float32_large_batch_is_finite_and_close():
    z1, z2, risk, missing = _batch(64, D=32, seed=7)
    ref = clef_loss(z1, z2, risk, missing)
    z1f, z2f = z1.float().requires_grad_(True), z2.float().requires_grad_(True)
    loss = clef_loss(z1f, z2f, risk.float(), missing.float())
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(z1f.grad).all() and torch.isfinite(z2f.grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def naive_nt_xent(z1, z2, t):
    Z = F.normalize(torch.cat([z1, z2]), dim=1)
    B = z1.shape[0]
    logits = (Z @ Z.T / t).masked_fill(torch.eye(2 * B, dtype=torch.bool), float("-inf"))
    target = (torch.arange(2 * B) + B) % (2 * B)
    return F.cross_entropy(logits, target)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_info_nce_equals_cross_entropy(t):
    z1, z2, _, _ = _batch(11, seed=8)
    got = _value_and_grads(lambda a, b: info_nce(a, b, t), z1, z2)
    ref = _value_and_grads(lambda a, b: naive_nt_xent(a, b, t), z1, z2)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_diagnostics_report_logits_block():
    z1, z2, risk, _ = _batch(6)
    diag = {}
    clef_loss(z1, z2, risk, diagnostics=diag)
    assert diag == {"logits_shape": (12, 12), "global_batch": 6}


def test_contrastive_losses_decrease_when_optimised():
    z1, z2, risk, missing = _batch(16, seed=9)
    for fn in (lambda a, b: clef_loss(a, b, risk, missing), info_nce):
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        opt = torch.optim.SGD([a, b], lr=0.5)
        first = None
        for _ in range(15):
            opt.zero_grad()
            loss = fn(a, b)
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
        assert fn(a, b).item() < 0.9 * first


# ------------------------------------------------------------------ BYOL


def test_byol_known_values_and_stop_gradient():
    p = torch.randn(5, 4, dtype=torch.float64)
    assert byol_loss(p, p, 3 * p, 2 * p).item() == pytest.approx(0.0, abs=1e-12)  # aligned: 0
    assert byol_loss(p, p, -p, -p).item() == pytest.approx(8.0)  # opposite: 4 per direction
    q = torch.randn(5, 4, dtype=torch.float64)
    expected = (2 - 2 * F.cosine_similarity(p, q) + 2 - 2 * F.cosine_similarity(q, p)).mean()
    assert byol_loss(p, q, p, q).item() == pytest.approx(expected.item())
    t1, t2 = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
    p1 = p.clone().requires_grad_(True)
    byol_loss(p1, q, t1, t2).backward()
    assert p1.grad is not None and t1.grad is None and t2.grad is None


def test_byol_toy_training_decreases():
    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 4)
    pred = torch.nn.Linear(4, 4)
    target = make_target(enc)
    opt = torch.optim.SGD(list(enc.parameters()) + list(pred.parameters()), lr=0.1)
    x = torch.randn(64, 6)
    losses = []
    for _ in range(20):
        v1, v2 = x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)
        with torch.no_grad():
            t1, t2 = target(v1), target(v2)
        loss = byol_loss(pred(enc(v1)), pred(enc(v2)), t1, t2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        momentum_update(target, enc, 0.9)
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


# ------------------------------------------------------------------ MoCo v2


def test_moco_loss_known_value():
    f64 = dict(dtype=torch.float64)
    q = torch.tensor([[1.0, 0.0]], **f64)
    k = torch.tensor([[2.0, 0.0]], **f64)  # keys are normalised too
    neg = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], **f64)
    t = 0.2
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(-1 / t)))
    assert moco_loss(q, k, neg, t).item() == pytest.approx(expected, rel=1e-12)


def test_moco_queue_updates_once_per_step_and_wraps():
    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 4)
    key_enc = make_target(enc)
    queue = MoCoQueue(dim=4, size=10)
    assert queue.keys.shape == (10, 4) and int(queue.ptr) == 0
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(10))
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    for step in range(3):
        x = torch.randn(4, 6)
        before = queue.keys.clone()
        q = enc(x + 0.1 * torch.randn_like(x))
        with torch.no_grad():
            k = key_enc(x + 0.1 * torch.randn_like(x))
        loss = moco_loss(q, k, queue)
        # the loss used the queue as it was at the start of the step
        torch.testing.assert_close(loss, moco_loss(q, k, before))
        queue.enqueue(k)  # once per step, before backward: the loss holds its own copy
        opt.zero_grad()
        loss.backward()
        opt.step()
        momentum_update(key_enc, enc, 0.99)
        assert int(queue.ptr) == (4 * (step + 1)) % 10
        slots = [(4 * step + i) % 10 for i in range(4)]
        torch.testing.assert_close(queue.keys[slots], F.normalize(k, dim=1))
        untouched = [i for i in range(10) if i not in slots]
        torch.testing.assert_close(queue.keys[untouched], before[untouched], rtol=0, atol=0)
    assert set(dict(queue.named_buffers())) == {"keys", "ptr"}


def test_moco_toy_training_decreases():
    # Fixed negatives (no enqueue) so that the loss is comparable across steps.
    torch.manual_seed(1)
    enc = torch.nn.Linear(8, 8)
    key_enc = make_target(enc)
    negatives = F.normalize(torch.randn(32, 8), dim=1)
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    x = torch.randn(16, 8)
    losses = []
    for _ in range(20):
        q = enc(x + 0.05 * torch.randn_like(x))
        with torch.no_grad():
            k = key_enc(x + 0.05 * torch.randn_like(x))
        loss = moco_loss(q, k, negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        momentum_update(key_enc, enc, 0.9)
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


def test_momentum_update_is_ema_of_parameters():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.clone() for p in target.parameters()]
    momentum_update(target, online, 0.9)
    for pt, p0, po in zip(target.parameters(), t0, online.parameters()):
        torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * po)
    frozen = make_target(online)
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in online.parameters())
