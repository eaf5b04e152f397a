"""Batched, device-agnostic CLEF view generation.

Per record (as CLEF makes its views): crop a `length` window; pick a usable lead at random; the
second view uses the same lead with p=0.8, else another usable lead; band-pass 0.67-40 Hz
(zero-phase Butterworth, order 5); add noise of one kind (none, motion, electrode, baseline or a
mixture) scaled to 0.1 mV RMS, after the band-pass as CLEF does; with p=0.2 zero a random 10-30 %
span; z-score each view.

The whole batch goes through tensor ops (no per-sample Python loop), so the same code runs in a
CPU loader worker or on the GPU inside the training step. Every random choice for a record comes
from its seed (`record_seed(seed, key, epoch)`) through the counter RNG in noise.py, so a record
gets the same views whatever batch, order or worker it lands in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from clef_model import noise
from clef_model.noise import randint, stable_seed, uniform

NOISE_KINDS: tuple[str, ...] = ("none", "motion", "electrode", "baseline", "mixture")


@dataclass(frozen=True)
class ViewConfig:
    length: int = 5000  # samples per view (10 s at 500 Hz)
    fs: float = 500.0
    band: tuple[float, float] = (0.67, 40.0)  # Hz
    butter_order: int = 5  # of the single pass; zero-phase doubles it, as filtfilt does
    # Odd-reflection padding each side before the FFT filter. The 0.67 Hz high-pass rings for
    # seconds, so whatever is assumed beyond the padded ends leaks inward: on LUDB, 1 s / 2 s /
    # 3 s of padding give 3 % / 0.8 % / 0.2 % of RMS worst-case deviation in the middle 60 %
    # from a 8 s-padded filtfilt. 3 s makes the FFT 8000 long (2^6 5^3, a fast size).
    pad_s: float = 3.0
    noise_rms_mv: float = 0.1
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    noise_probs: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    noise_path: str | None = None  # directory with NSTDB-style ma/em/bw WFDB records
    noise_mode: str = "bank"  # "bank": seeded segments of long recordings; "fresh": synthesise
    p_same_lead: float = 0.8
    p_mask: float = 0.2
    mask_frac: tuple[float, float] = (0.1, 0.3)
    eps: float = 1e-6  # z-score guard for flat views
    seed: int = 0  # the run seed; record_seed mixes it with the record key and epoch

    def __post_init__(self):
        if len(self.noise_kinds) != len(self.noise_probs):
            raise ValueError("noise_kinds and noise_probs differ in length")
        bad = set(self.noise_kinds) - set(NOISE_KINDS)
        if bad:
            raise ValueError(f"unknown noise kinds {sorted(bad)}; known: {NOISE_KINDS}")
        if abs(sum(self.noise_probs) - 1.0) > 1e-6:
            raise ValueError(f"noise_probs sum to {sum(self.noise_probs)}, not 1")
        if self.noise_mode not in ("bank", "fresh"):
            raise ValueError(f"noise_mode must be 'bank' or 'fresh', not {self.noise_mode!r}")


def record_seed(seed: int, key: str, epoch: int) -> int:
    """One int64 (in [0, 2^63)) per (run seed, record key, epoch); stable across processes."""
    return stable_seed(seed, key, epoch)


def record_seeds(seed: int, keys: list[str], epoch: int) -> torch.Tensor:
    """record_seed for a list of keys, as the int64 tensor make_views takes."""
    return torch.tensor([record_seed(seed, k, epoch) for k in keys], dtype=torch.int64)


# Stream ids: one per kind of random decision, so adding a decision never shifts another's draws.
_S_CHOICE = 1  # crop offset, first lead, same-lead coin, second lead
_S_NOISE = 10  # + view: noise kind, mixture weights
_S_SEGMENT = 20  # + view: noise bank channel/offset (or fresh synthesis)
_S_MASK = 30  # + view: mask coin, fraction, start


# ---------------------------------------------------------------------------------------------
# Band-pass


@lru_cache(maxsize=64)
def _butter_sq_mag(n_fft: int, fs: float, low: float, high: float, order: int) -> np.ndarray:
    """|H(f)|^2 of scipy's butter(order, [low, high], 'band', fs) at the rfft bins of n_fft.

    scipy designs it by bilinear transform with pre-warping, so at digital frequency f the
    response is the analog band-pass at W = 2 fs tan(pi f / fs): with W0^2 = W1 W2 (pre-warped
    edges) and BW = W2 - W1, |H|^2 = 1 / (1 + ((W^2 - W0^2) / (W BW))^(2 order)). filtfilt runs
    H forward and backward, so its magnitude response is exactly this |H|^2 with zero phase.
    """
    f = np.fft.rfftfreq(n_fft, 1.0 / fs)
    warp = lambda x: 2 * fs * np.tan(np.pi * np.asarray(x, dtype=np.float64) / fs)  # noqa: E731
    w1, w2 = warp(low), warp(high)
    w = warp(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (w * w - w1 * w2) / (w * (w2 - w1))
        h2 = 1.0 / (1.0 + x ** (2 * order))
    h2[f == 0] = 0.0  # band-pass: no DC
    h2[~np.isfinite(h2)] = 0.0
    return h2


def _filtered_windows(signals: torch.Tensor, rec: torch.Tensor, lead: torch.Tensor,
                      offset: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
    """Band-passed windows signals[rec, lead, offset:offset+length] -> [N, length].

    The FFT filter is circular, so each window is extended by odd (point) reflection, like
    filtfilt's 'odd' padding (pad_s each side, a little more on the right to reach a fast FFT
    length), and the straight line joining the two ends of the padded row is subtracted so the
    circular wrap has no jump. Removing a line changes nothing else: |H|^2 has a 2*order-fold
    zero at DC, so the filter maps a ramp to zero. What remains differs from filtfilt only near
    the edges, where filtfilt's own initial-condition transients are (the 0.67 Hz high-pass
    rings for seconds; see tests/test_views.py for the measured agreement).

    Crop, reflection and detrend are one gather plus one rank-4 addmm, so each row is touched
    a handful of times around the FFT pair: on CPU the cost is memory passes, not arithmetic.
    """
    import scipy.fft  # pure Python helper for a fast transform length

    b, c, t = signals.shape
    length = cfg.length
    dev = signals.device
    pad = min(int(round(cfg.pad_s * cfg.fs)), length - 1)
    n_fft = scipy.fft.next_fast_len(length + 2 * pad, real=True)
    right = min(n_fft - length - pad, length - 1)
    n_fft = length + pad + right
    k, line = _pad_basis(length, pad, right, str(dev))
    # row copies (index_select is a memcpy per row; ~5x faster on CPU than one 2-D gather)
    rows = signals.reshape(b * c, t).index_select(0, rec * c + lead)
    if t != length:  # unfold is a strided view of every window; indexing copies the chosen ones
        rows = rows.unfold(1, length, 1)[torch.arange(rows.shape[0], device=dev), offset]
    g = rows.index_select(1, k)  # [N, n_fft]: positions -pad..length+right-1, pads reflected
    u = torch.stack([g[:, pad], g[:, pad + length - 1], g[:, 0], g[:, -1]], 1)
    g[:, :pad].neg_()
    g[:, pad + length:].neg_()
    g.addmm_(u, line)  # + 2 x_edge on the pads, - the end-to-end line
    h2 = _h2_tensor(n_fft, cfg, str(dev))
    spec = torch.fft.rfft(g)
    spec.mul_(h2)
    return torch.fft.irfft(spec, n=n_fft)[:, pad:pad + length]


@lru_cache(maxsize=64)
def _pad_basis(length: int, pad: int, right: int, device: str):
    """Reflected indices [n_fft] and the [4, n_fft] affine basis for (x0, x_last, x[pad],
    x[last-right]): odd padding is 2*x_edge - x[reflected]; the padded row's ends are then
    a = 2 x0 - x[pad] and b = 2 x_last - x[last-right], and the line a(1-r) + b r is removed."""
    j = np.arange(-pad, length + right)
    refl = np.where(j < 0, -j, np.where(j >= length, 2 * (length - 1) - j, j))
    r = np.linspace(0.0, 1.0, len(j))
    left, rightm = (j < 0).astype(np.float64), (j >= length).astype(np.float64)
    basis = np.stack([2 * left - 2 * (1 - r), 2 * rightm - 2 * r, 1 - r, r])
    return (torch.as_tensor(refl, dtype=torch.int64, device=device),
            torch.as_tensor(basis, dtype=torch.float32, device=device))


@lru_cache(maxsize=64)
def _h2_tensor(n_fft: int, cfg: ViewConfig, device: str) -> torch.Tensor:
    h2 = _butter_sq_mag(n_fft, cfg.fs, *cfg.band, cfg.butter_order)
    return torch.as_tensor(h2, dtype=torch.float32, device=device)


def bandpass(x: torch.Tensor, cfg: ViewConfig = ViewConfig()) -> torch.Tensor:
    """Zero-phase Butterworth band-pass of rows x [N, cfg.length] (float32), the same code path
    make_views uses: one FFT multiply by |H|^2 with odd-reflection padding (see
    _filtered_windows)."""
    n, length = x.shape
    rows = torch.arange(n, device=x.device)
    zero = torch.zeros_like(rows)
    cfg = dataclasses.replace(cfg, length=length)
    return _filtered_windows(x.to(torch.float32).contiguous()[:, None], rows, zero, zero, cfg)


# ---------------------------------------------------------------------------------------------
# Random choices


def _nth_usable(mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Index of the k-th (0-based) True in each row of mask [B, C]."""
    return (mask.cumsum(1) <= k[:, None]).sum(1)


def choose_leads(lead_mask: torch.Tensor, seeds: torch.Tensor, cfg: ViewConfig = ViewConfig()):
    """(lead1 [B], lead2 [B], crop uniform [B]) for each record, from its seed only."""
    n_use = lead_mask.sum(1)
    if bool((n_use == 0).any()):
        bad = torch.nonzero(n_use == 0).flatten().tolist()
        raise ValueError(f"records at batch positions {bad} have no usable lead (lead_mask all False)")
    u = uniform(seeds, _S_CHOICE, 4)
    k1 = randint(u[:, 1], n_use)
    other = randint(u[:, 3], (n_use - 1).clamp_min(1))
    other = other + (other >= k1).long()  # skip the first lead's rank
    same = (u[:, 2] < cfg.p_same_lead) | (n_use == 1)
    k2 = torch.where(same, k1, other)
    return _nth_usable(lead_mask, k1), _nth_usable(lead_mask, k2), u[:, 0]


def _noise(seeds: torch.Tensor, view: torch.Tensor, cfg: ViewConfig):
    """Noise for rows (seed, view index): ([N, length] with RMS noise_rms_mv or exactly 0,
    kind index [N] into NOISE_KINDS)."""
    dev = seeds.device
    n_rows, length = seeds.shape[0], cfg.length
    u = uniform(seeds, _S_NOISE + view, 4)
    cum = torch.tensor(np.cumsum(cfg.noise_probs)[:-1], dtype=torch.float32, device=dev)
    pick = torch.searchsorted(cum, u[:, :1].contiguous(), right=True).squeeze(1)
    kind = torch.tensor([NOISE_KINDS.index(k) for k in cfg.noise_kinds], device=dev)[pick]
    # weights over the (motion, electrode, baseline) components: one-hot, mixture, or none
    onehot = torch.eye(4, 3, device=dev)[(kind - 1).clamp(0, 3)]  # row 3 of eye(4, 3) is 0
    mix = 0.2 + 0.8 * u[:, 1:4]  # each component present in a mixture, in random proportion
    w = torch.where((kind == 4)[:, None], mix, onehot) * (kind != 0)[:, None]
    if cfg.noise_mode == "fresh":
        comps = noise.synthetic_components(seeds, length, cfg.fs, _S_SEGMENT + view)
        out = (w[:, :, None] * comps).sum(1)
    else:
        bank = noise.cached_bank(cfg.noise_path, float(cfg.fs), cfg.seed, str(dev))
        us = uniform(seeds, _S_SEGMENT + view, 6)
        out = torch.zeros(n_rows, length, device=dev)
        for k in range(3):  # a loop over the 3 kinds, not samples: gather only rows that use k
            rows = torch.nonzero(w[:, k] > 0).flatten()
            if rows.numel():
                seg = bank.draw(k, us[rows, 2 * k], us[rows, 2 * k + 1], length)
                out.index_add_(0, rows, seg.mul_(w[rows, k, None]))
    rms = torch.linalg.vector_norm(out, dim=-1, keepdim=True) / math.sqrt(length)
    out.mul_(torch.where(rms > 0, cfg.noise_rms_mv / rms.clamp_min(1e-12), 0.0))
    return out, kind


def view_noise(seeds: torch.Tensor, view: int, cfg: ViewConfig = ViewConfig()):
    """(noise [B, length], kind [B]) that make_views adds to view 0 or 1 of each record."""
    return _noise(seeds, torch.full_like(seeds, view), cfg)


def _mask_spans(seeds: torch.Tensor, view: torch.Tensor, cfg: ViewConfig):
    """(start [N], span [N]) of the zeroed span per row; span 0 where no mask (p = 1 - p_mask)."""
    u = uniform(seeds, _S_MASK + view, 3)
    lo, hi = cfg.mask_frac
    span = torch.round((lo + (hi - lo) * u[:, 1]) * cfg.length).long()
    start = randint(u[:, 2], cfg.length - span + 1)
    return start, span * (u[:, 0] < cfg.p_mask)


def _span_bool(start: torch.Tensor, span: torch.Tensor, length: int) -> torch.Tensor:
    t = torch.arange(length, device=start.device)
    return (t >= start[:, None]) & (t < (start + span)[:, None])


def span_mask(seeds: torch.Tensor, view: int, cfg: ViewConfig = ViewConfig()) -> torch.Tensor:
    """[B, length] bool, True on the span make_views zeroes in view 0 or 1 of each record."""
    return _span_bool(*_mask_spans(seeds, torch.full_like(seeds, view), cfg), cfg.length)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class ViewParts:
    """What make_views decides and computes, view-major: index [v] or [v, b] for view v of
    record b (for tests and debugging)."""
    leads: torch.Tensor  # [2, B] lead index of each view
    offset: torch.Tensor  # [B] crop start (both views share the window)
    clean: torch.Tensor | None  # [2, B, L] band-passed crops (None unless keep_parts)
    noise: torch.Tensor | None  # [2, B, L] added noise in mV (None unless keep_parts)
    kind: torch.Tensor  # [2, B] index into NOISE_KINDS
    mask_start: torch.Tensor  # [2, B]
    mask_span: torch.Tensor  # [2, B] zeroed samples (0: no mask)
    views: torch.Tensor  # [2, B, L]: z-scored by make_views, raw (clean + noise, masked) here


def view_parts(signals: torch.Tensor, lead_mask: torch.Tensor, seeds: torch.Tensor,
               cfg: ViewConfig = ViewConfig(), keep_parts: bool = True) -> ViewParts:
    """The view pipeline up to (not including) the z-score."""
    if signals.dim() != 3:
        raise ValueError(f"signals must be [B, leads, T], got shape {tuple(signals.shape)}")
    b, c, t = signals.shape
    length = cfg.length
    if t < length:
        raise ValueError(f"signals have {t} samples, fewer than the view length {length}")
    if lead_mask.shape != (b, c):
        raise ValueError(f"lead_mask shape {tuple(lead_mask.shape)} does not match signals {(b, c)}")
    dev = signals.device
    x = signals.to(torch.float32).contiguous()
    seeds = torch.as_tensor(seeds, dtype=torch.int64).to(dev)
    lead1, lead2, u_crop = choose_leads(lead_mask.to(dev, torch.bool), seeds, cfg)
    offset = randint(u_crop, t - length + 1)  # one window per record: both views see the same time
    # Same lead in ~80 % of records: the band-pass precedes the noise, so a same-lead second
    # view reuses the first view's filtered crop; only differing leads are filtered again.
    rows = torch.arange(b, device=dev)
    diff = torch.nonzero(lead2 != lead1).flatten()
    rec = torch.cat([rows, diff])
    filt = _filtered_windows(x, rec, torch.cat([lead1, lead2[diff]]), offset[rec], cfg)
    src2 = rows.clone()
    src2[diff] = b + torch.arange(diff.numel(), device=dev)
    views = filt.index_select(0, torch.cat([rows, src2]))  # [2B, L], view-major
    clean = views.clone() if keep_parts else None
    seeds2 = torch.cat([seeds, seeds])
    view_id = torch.cat([torch.zeros_like(seeds), torch.ones_like(seeds)])
    nz, kind = _noise(seeds2, view_id, cfg)
    views.add_(nz)
    start, span = _mask_spans(seeds2, view_id, cfg)
    masked = torch.nonzero(span > 0).flatten()
    if masked.numel():
        views[masked] = views[masked].masked_fill_(_span_bool(start[masked], span[masked], length), 0.0)
    two = lambda z: z.view(2, b, *z.shape[1:])  # noqa: E731
    return ViewParts(torch.stack([lead1, lead2]), offset,
                     two(clean) if keep_parts else None, two(nz) if keep_parts else None,
                     two(kind), two(start), two(span), two(views))


def _zscore_(x: torch.Tensor, eps: float) -> torch.Tensor:
    # in place, and no torch.std: its Welford kernel is ~10x slower on CPU than two reductions
    x.sub_(x.mean(-1, keepdim=True))
    std = torch.linalg.vector_norm(x, dim=-1, keepdim=True) / math.sqrt(x.shape[-1])
    return x.div_(std + eps)


def make_views(signals: torch.Tensor, lead_mask: torch.Tensor, seeds: torch.Tensor,
               cfg: ViewConfig = ViewConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Two CLEF views per record: signals [B, 12, T] (mV), lead_mask [B, 12] bool, seeds [B]
    int64 (record_seed) -> (v1, v2), each [B, 1, cfg.length] float32, z-scored per view."""
    v = _zscore_(view_parts(signals, lead_mask, seeds, cfg, keep_parts=False).views, cfg.eps)
    return v[0].unsqueeze(1), v[1].unsqueeze(1)
