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
import threading
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
    # real ma/em/bw-style recordings (arrays; the platform reads them: layout.noise); None: the
    # synthetic models
    noise_recordings: noise.NoiseRecordings | None = None
    noise_mode: str = "bank"  # "bank": seeded segments of long recordings; "fresh": synthesise
    p_same_lead: float = 0.8
    p_mask: float = 0.2
    mask_frac: tuple[float, float] = (0.1, 0.3)
    eps: float = 1e-6  # z-score guard for flat views
    seed: int = 0  # the run seed; record_seed mixes it with the record key and epoch
    # "platform": the FFT band-pass above (batched, on the device); "paper": the release's
    # band-pass, scipy filtfilt at its default padding (odd, 3 x 11 samples) row by row on the
    # CPU in float64 (clef/data/contrastive_dataloader.py:37-50 of the release): slower, and
    # different from the platform's near the window edges (docs/reproducing.md).
    profile: str = "platform"

    def __post_init__(self):
        if self.profile not in ("platform", "paper"):
            raise ValueError(f"view profile must be 'platform' or 'paper', not {self.profile!r}")
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


# Rows per FFT call on CPU. MKL's batched transform slows down per row once a batch of 8000-long
# rows outgrows the cache (~2.5x at 240 rows vs 32 measured), and per call it pays a plan setup,
# so blocks of a few dozen rows are the sweet spot. Elsewhere (GPU) all rows go in one call.
_CPU_CHUNK = 40
_scratch = threading.local()


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """A scratch buffer reused across calls on CPU (per thread): MKL's FFT into freshly allocated
    outputs runs ~2x slower than into warm ones. On other devices a fresh tensor (the CUDA
    caching allocator recycles already). Never returned to callers."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    need = math.prod(shape)
    buf = bufs.get((name, dtype))
    if buf is None or buf.numel() < need:
        buf = bufs[(name, dtype)] = torch.empty(need, dtype=dtype)
    return buf[:need].view(shape)


@lru_cache(maxsize=64)
def _filter_consts(length: int, fs: float, band: tuple[float, float], order: int, pad_s: float,
                   device: str):
    """(pad, right, n_fft, |H|^2 [n_fft//2+1], affine response [4, length], edge columns [4]).

    The FFT filter is circular, so each window x is extended by odd (point) reflection, like
    filtfilt's 'odd' padding (pad each side, `right` = a little more on the right to reach a
    fast FFT length), and the straight line joining the two ends of the padded row is removed
    so the circular wrap has no jump. Removing a line changes nothing else: |H|^2 has a
    2*order-fold zero at DC, so the filter maps a ramp to zero. What remains differs from
    filtfilt only near the edges, where filtfilt's own initial-condition transients are (the
    0.67 Hz high-pass rings for seconds; see tests/test_views.py for the measured agreement).

    That padded row is Q + u @ basis: Q = [-x reflected, x, -x reflected] and u = (x0, x_last,
    x[pad], x[last-right]) with a fixed [4, n_fft] basis (2 x_edge on the pads, minus the
    end-to-end line a(1-r) + b r, a = 2 x0 - x[pad], b = 2 x_last - x[last-right]). The filter
    is linear, so the band-pass is filter(Q) + u @ filter(basis): the basis response is
    computed here once (float64), and per row only Q goes through the FFT."""
    import scipy.fft  # pure Python helper for a fast transform length

    pad = min(int(round(pad_s * fs)), length - 1)
    n_fft = scipy.fft.next_fast_len(length + 2 * pad, real=True)
    right = min(n_fft - length - pad, length - 1)
    n_fft = length + pad + right
    h2 = _butter_sq_mag(n_fft, fs, band[0], band[1], order)
    j = np.arange(-pad, length + right)
    r = np.linspace(0.0, 1.0, len(j))
    left, rightm = (j < 0).astype(np.float64), (j >= length).astype(np.float64)
    basis = np.stack([2 * left - 2 * (1 - r), 2 * rightm - 2 * r, 1 - r, r])
    resp = np.fft.irfft(np.fft.rfft(basis, axis=-1) * h2, n=n_fft, axis=-1)[:, pad:pad + length]
    cols = [pad, pad + length - 1, 2 * pad, pad + length - 1 - right]  # in the padded row
    return (pad, right, n_fft, torch.as_tensor(h2, dtype=torch.float32, device=device),
            torch.as_tensor(np.ascontiguousarray(resp), dtype=torch.float32, device=device),
            torch.tensor(cols, dtype=torch.int64, device=device))


def _bandpass_rows(flat: torch.Tensor, starts: torch.Tensor, cfg: ViewConfig, out: torch.Tensor):
    """out[i] = band-pass of the window flat[starts[i]:starts[i] + cfg.length] (flat: 1-D float32).

    Per block of rows: one gather of the windows straight into the padded rows (a memcpy per
    row from a strided view of all windows), the two reflected pads, rfft, multiply by |H|^2,
    irfft into reused buffers, then the middle plus the precomputed affine response (one
    rank-4 addmm) into out. See _filter_consts for why that equals filtering the padded row."""
    length = cfg.length
    dev = flat.device
    n_rows = starts.numel()
    if n_rows == 0:
        return out
    if cfg.profile == "paper":
        return _filtfilt_rows(flat, starts, cfg, out)
    pad, right, n_fft, h2, resp, cols = _filter_consts(length, float(cfg.fs), tuple(cfg.band),
                                                       cfg.butter_order, float(cfg.pad_s), str(dev))
    windows = flat.as_strided((flat.numel() - length + 1, length), (1, 1))
    if dev.type == "cpu":  # equal blocks of at most _CPU_CHUNK rows
        chunk = -(-n_rows // -(-n_rows // _CPU_CHUNK))
    else:
        chunk = n_rows
    rows = chunk
    g = _workspace("pad", (rows, n_fft), torch.float32, dev)
    spec = _workspace("spec", (rows, n_fft // 2 + 1), torch.complex64, dev)
    filt = _workspace("filt", (rows, n_fft), torch.float32, dev)
    for s in range(0, n_rows, chunk):
        e = min(s + chunk, n_rows)
        gc, sc, fc = g[:e - s], spec[:e - s], filt[:e - s]
        if dev.type == "cpu":  # straight into the middle of the padded rows
            torch.index_select(windows, 0, starts[s:e], out=gc[:, pad:pad + length])
        else:
            gc[:, pad:pad + length] = windows.index_select(0, starts[s:e])
        if pad:
            torch.neg(gc[:, pad + 1:2 * pad + 1].flip(1), out=gc[:, :pad])
        if right:
            torch.neg(gc[:, pad + length - 1 - right:pad + length - 1].flip(1), out=gc[:, pad + length:])
        u = gc.index_select(1, cols)
        torch.fft.rfft(gc, out=sc)
        sc.mul_(h2)
        torch.fft.irfft(sc, n=n_fft, out=fc)
        oc = out[s:e]
        oc.copy_(fc[:, pad:pad + length])
        oc.addmm_(u, resp)
    return out


def _filtfilt_rows(flat: torch.Tensor, starts: torch.Tensor, cfg: ViewConfig, out: torch.Tensor):
    """The `paper` profile: scipy's filtfilt with its default padding on each window."""
    from scipy.signal import butter, filtfilt

    b, a = butter(cfg.butter_order, [cfg.band[0], cfg.band[1]], btype="band", fs=cfg.fs)
    x = flat.detach().to("cpu", torch.float64).numpy()
    idx = starts.to("cpu").numpy()[:, None] + np.arange(cfg.length)[None, :]
    y = filtfilt(b, a, x[idx], axis=-1)
    out.copy_(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(out.device))
    return out


def bandpass(x: torch.Tensor, cfg: ViewConfig = ViewConfig()) -> torch.Tensor:
    """Zero-phase Butterworth band-pass of rows x [N, cfg.length] (float32), the same code path
    make_views uses: one FFT multiply by |H|^2 with odd-reflection padding (see
    _filter_consts)."""
    n, length = x.shape
    cfg = dataclasses.replace(cfg, length=length)
    flat = x.to(torch.float32).contiguous().reshape(-1)
    starts = torch.arange(n, device=x.device) * length
    return _bandpass_rows(flat, starts, cfg, torch.empty(n, length, device=x.device))


# ---------------------------------------------------------------------------------------------
# Random choices

# Every per-record draw of the pipeline, one stream each (drawn together by uniform_streams; the
# values are those of uniform(seeds, stream, n) for each stream, so the split into streams
# above still holds).
_STREAMS = (_S_CHOICE, _S_NOISE, _S_NOISE + 1, _S_SEGMENT, _S_SEGMENT + 1, _S_MASK, _S_MASK + 1)
_N_DRAWS = 6


def _nth_usable(mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Index of the k-th (0-based) True in each row of mask [B, C]."""
    return (mask.cumsum(1) <= k[:, None]).sum(1)


def _leads_from_u(lead_mask: torch.Tensor, u: torch.Tensor, cfg: ViewConfig):
    """(lead1, lead2) from the _S_CHOICE uniforms u [B, >= 4]."""
    n_use = lead_mask.sum(1)
    if bool((n_use == 0).any()):
        bad = torch.nonzero(n_use == 0).flatten().tolist()
        raise ValueError(f"records at batch positions {bad} have no usable lead (lead_mask all False)")
    # the first lead's rank (u[:, 1]) and the other lead's rank (u[:, 3]) in one randint
    k = randint(u[:, 1:4:2], torch.stack([n_use, (n_use - 1).clamp_min(1)], 1))
    k1, other = k[:, 0], k[:, 1]
    other = other + (other >= k1)  # skip the first lead's rank
    same = (u[:, 2] < cfg.p_same_lead) | (n_use == 1)
    k[:, 1] = torch.where(same, k1, other)
    # the k-th usable lead: the number of leads whose running count of usable leads is <= k
    lead = (lead_mask.cumsum(1)[:, :, None] <= k[:, None, :]).sum(1)
    return lead[:, 0], lead[:, 1]


def choose_leads(lead_mask: torch.Tensor, seeds: torch.Tensor, cfg: ViewConfig = ViewConfig()):
    """(lead1 [B], lead2 [B], crop uniform [B]) for each record, from its seed only."""
    u = uniform(seeds, _S_CHOICE, 4)
    return (*_leads_from_u(lead_mask, u, cfg), u[:, 0])


@lru_cache(maxsize=64)
def _kind_consts(probs: tuple[float, ...], kinds: tuple[str, ...], device: str):
    cum = torch.tensor(np.cumsum(probs)[:-1], dtype=torch.float32, device=device)
    idx = [NOISE_KINDS.index(k) for k in kinds]
    return cum, (None if idx == list(range(len(NOISE_KINDS))) else torch.tensor(idx, device=device))


@dataclass
class _Noise:
    """A batch of view noise, factored for a fused add: row i's noise is
    prim[i] * scale[i], except rows `mix` (mixtures), whose noise is mixed[j] (already scaled)."""
    kind: torch.Tensor  # [N] index into NOISE_KINDS
    prim: torch.Tensor  # [N, L]
    scale: torch.Tensor  # [N, 1] float32 (0 for no noise and for mixtures)
    mix: torch.Tensor  # [M] rows
    mixed: torch.Tensor  # [M, L]

    def dense(self) -> torch.Tensor:
        out = self.prim * self.scale
        if self.mix.numel():
            out.index_copy_(0, self.mix, self.mixed)
        return out


def _noise_from_u(u_noise: torch.Tensor, u_seg: torch.Tensor, cfg: ViewConfig, seeds=None,
                  view=None) -> _Noise:
    """Noise rows from their _S_NOISE (u_noise [N, >= 4]) and _S_SEGMENT (u_seg [N, 6]) uniforms
    (fresh mode synthesises from (seeds, view) instead of u_seg).

    Bank mode: one gather from the flattened bank takes every row's main segment (its kind's,
    or a mixture's first component; rows with no noise take one too and scale it by 0) and the
    mixtures' other two. Single-kind rows are scaled to noise_rms_mv by the segment's RMS from
    the bank's running sum of squares (no pass over the data); mixtures (weights 0.2-1 each) by
    their measured RMS."""
    dev = u_noise.device
    length = cfg.length
    cum, kinds = _kind_consts(tuple(cfg.noise_probs), tuple(cfg.noise_kinds), str(dev))
    kind = (u_noise[:, :1] >= cum).sum(1)  # = searchsorted(cum, u, right=True)
    if kinds is not None:
        kind = kinds[kind]
    is_mix = kind == 4
    mix = torch.nonzero(is_mix).flatten()
    n_mix = mix.numel()
    target = cfg.noise_rms_mv
    if cfg.noise_mode == "fresh":
        onehot = torch.eye(4, 3, device=dev)[(kind - 1).clamp(0, 3)]  # row 3 of eye(4, 3) is 0
        w = torch.where(is_mix[:, None], 0.2 + 0.8 * u_noise[:, 1:4], onehot) * (kind != 0)[:, None]
        comps = noise.synthetic_components(seeds, length, cfg.fs, _S_SEGMENT + view)
        out = (w[:, :, None] * comps).sum(1)
        rms = torch.linalg.vector_norm(out, dim=-1, keepdim=True) / math.sqrt(length)
        out.mul_(torch.where(rms > 0, target / rms.clamp_min(1e-12), 0.0))
        return _Noise(kind, out, torch.ones(len(kind), 1, device=dev), mix[:0], out[:0])
    fb = noise.cached_flat_bank(cfg.noise_recordings, float(cfg.fs), cfg.seed, str(dev))
    n = kind.shape[0]
    comp = (kind - 1).clamp_min_(0).masked_fill_(is_mix, 0)  # main component
    uc = u_seg.gather(1, comp[:, None] * 2 + _pair_cols(str(dev)))  # its (channel, offset) uniforms
    if n_mix:  # the mixtures' three components follow the main segments
        um = u_seg[mix].view(n_mix * 3, 2)
        comp = torch.cat([comp, _components(str(dev)).repeat(n_mix)])
        uc = torch.cat([uc, um])
    start = fb.starts2(comp, uc, length)
    segs = fb.windows(length).index_select(0, start)
    rms = fb.sum_sq(start[:n], length).div_(length).sqrt_()
    scale = (target / rms.clamp_min(1e-12)).masked_fill_((rms == 0) | (kind == 0) | is_mix, 0.0)
    prim, mixed = segs[:n], segs[n:].view(n_mix, 3, length)
    if n_mix:
        mixed.mul_((0.2 + 0.8 * u_noise[mix, 1:4])[:, :, None])  # each present, in random proportion
        mixed = mixed.sum(1)
        r = torch.linalg.vector_norm(mixed, dim=-1, keepdim=True) / math.sqrt(length)
        mixed.mul_(torch.where(r > 0, target / r.clamp_min(1e-12), 0.0))
    return _Noise(kind, prim, scale.to(torch.float32)[:, None], mix, mixed[:, 0] if not n_mix else mixed)


@lru_cache(maxsize=8)
def _pair_cols(device: str) -> torch.Tensor:
    return torch.tensor([[0, 1]], device=device)


@lru_cache(maxsize=8)
def _components(device: str) -> torch.Tensor:
    return torch.arange(3, device=device)


def _noise(seeds: torch.Tensor, view: torch.Tensor, cfg: ViewConfig):
    """Noise for rows (seed, view index): ([N, length] with RMS noise_rms_mv or exactly 0,
    kind index [N] into NOISE_KINDS)."""
    nz = _noise_from_u(uniform(seeds, _S_NOISE + view, 4), uniform(seeds, _S_SEGMENT + view, 6),
                       cfg, seeds, view)
    return nz.dense(), nz.kind


def view_noise(seeds: torch.Tensor, view: int, cfg: ViewConfig = ViewConfig()):
    """(noise [B, length], kind [B]) that make_views adds to view 0 or 1 of each record."""
    return _noise(seeds, torch.full_like(seeds, view), cfg)


def _spans_from_u(u: torch.Tensor, cfg: ViewConfig):
    lo, hi = cfg.mask_frac
    span = (u[:, 1] * (hi - lo)).add_(lo).mul_(cfg.length).round_().to(torch.int64)
    start = randint(u[:, 2], (cfg.length + 1) - span)
    return start, span.mul_(u[:, 0] < cfg.p_mask)


def _mask_spans(seeds: torch.Tensor, view: torch.Tensor, cfg: ViewConfig):
    """(start [N], span [N]) of the zeroed span per row; span 0 where no mask (p = 1 - p_mask)."""
    return _spans_from_u(uniform(seeds, _S_MASK + view, 3), cfg)


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


def _pipeline(signals: torch.Tensor, lead_mask: torch.Tensor, seeds: torch.Tensor,
              cfg: ViewConfig, keep_parts: bool) -> ViewParts:
    """The view pipeline up to (not including) the z-score. Views are [2B, L] view-major.

    Memory passes are what cost on CPU, so: one RNG evaluation for every draw; the band-pass
    writes view 0 (and the ~20 % of second views on another lead) straight into the output;
    with keep_parts=False the noise is added by one fused multiply-add per row (view 1 of a
    same-lead record reads view 0's clean crop and writes its own row in the same pass)."""
    if signals.dim() != 3:
        raise ValueError(f"signals must be [B, leads, T], got shape {tuple(signals.shape)}")
    b, c, t = signals.shape
    length = cfg.length
    if t < length:
        raise ValueError(f"signals have {t} samples, fewer than the view length {length}")
    if lead_mask.shape != (b, c):
        raise ValueError(f"lead_mask shape {tuple(lead_mask.shape)} does not match signals {(b, c)}")
    dev = signals.device
    flat = signals.to(torch.float32).contiguous().reshape(-1)
    seeds = torch.as_tensor(seeds, dtype=torch.int64).to(dev)
    u = noise.uniform_streams(seeds, noise.stream_consts(_STREAMS, _N_DRAWS, str(dev)))  # [B, 7, 6]
    lead1, lead2 = _leads_from_u(lead_mask.to(dev, torch.bool), u[:, 0], cfg)
    # one window per record: both views see the same time (randint(u, 1) is 0: skip it)
    offset = randint(u[:, 0, 0], t - length + 1) if t > length else torch.zeros_like(seeds)
    u_noise, u_seg, u_mask = u[:, 1:].transpose(0, 1).reshape(3, 2 * b, _N_DRAWS)  # view-major rows
    # Same lead in ~80 % of records: the band-pass precedes the noise, so a same-lead second
    # view reuses the first view's filtered crop; only the D differing leads are filtered
    # again. Rows of `rows`: D such crops, then the 2B views (view-major), so that one
    # band-pass call fills the first D + B rows.
    diff = torch.nonzero(lead2 != lead1).flatten()
    d = diff.numel()
    rec = torch.cat([diff, torch.arange(b, device=dev)])
    starts = (rec * c).add_(torch.cat([lead2[diff], lead1])).mul_(t).add_(offset[rec])
    rows = torch.empty(d + 2 * b, length, device=dev)
    _bandpass_rows(flat, starts, cfg, rows[:d + b])
    other, views = rows[:d], rows[d:]
    if cfg.noise_mode == "fresh":
        seeds2 = torch.cat([seeds, seeds])
        view_id = torch.cat([torch.zeros_like(seeds), torch.ones_like(seeds)])
        nz = _noise_from_u(u_noise, u_seg, cfg, seeds2, view_id)
    else:
        nz = _noise_from_u(u_noise, u_seg, cfg)
    clean = dense = None
    v0, v1 = views[:b], views[b:]
    if keep_parts:
        v1.copy_(v0)
        views.index_copy_(0, diff + b, other)
        clean = views.clone()
        dense = nz.dense()
        views.add_(dense)
    else:  # one fused multiply-add per row; view 1 reads view 0's clean crop where leads agree
        p, s = nz.prim, nz.scale
        torch.addcmul(v0, p[b:], s[b:], out=v1)
        v0.addcmul_(p[:b], s[:b])
        if d:
            d1 = diff + b
            views.index_copy_(0, d1, other.addcmul_(p[d1], s[d1]))
        if nz.mix.numel():
            views.index_add_(0, nz.mix, nz.mixed)
    start, span = _spans_from_u(u_mask, cfg)
    masked = torch.nonzero(span).flatten()
    if masked.numel():
        mrows = views.index_select(0, masked)
        mrows.masked_fill_(_span_bool(start[masked], span[masked], length), 0.0)
        views.index_copy_(0, masked, mrows)
    two = lambda z: z.view(2, b, *z.shape[1:])  # noqa: E731
    return ViewParts(torch.stack([lead1, lead2]), offset,
                     two(clean) if keep_parts else None, two(dense) if keep_parts else None,
                     two(nz.kind), two(start), two(span), two(views))


def view_parts(signals: torch.Tensor, lead_mask: torch.Tensor, seeds: torch.Tensor,
               cfg: ViewConfig = ViewConfig(), keep_parts: bool = True) -> ViewParts:
    """The view pipeline up to (not including) the z-score."""
    return _pipeline(signals, lead_mask, seeds, cfg, keep_parts)


def _zscore_(x: torch.Tensor, eps: float) -> torch.Tensor:
    """In place over the last dim: two read passes (sum, sum of squares; no torch.std, whose
    Welford kernel is ~10x slower on CPU) and one fused write pass. The one-pass variance
    E[x^2] - mean^2 is safe here: a band-passed view's mean is small next to its spread."""
    n = x.shape[-1]
    mean = x.sum(-1, keepdim=True).div_(n)
    var = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(n).sub_(mean * mean)
    return x.sub_(mean).div_(var.clamp_min_(0).sqrt_().add_(eps))


def make_views(signals: torch.Tensor, lead_mask: torch.Tensor, seeds: torch.Tensor,
               cfg: ViewConfig = ViewConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Two CLEF views per record: signals [B, 12, T] (mV), lead_mask [B, 12] bool, seeds [B]
    int64 (record_seed) -> (v1, v2), each [B, 1, cfg.length] float32, z-scored per view."""
    v = _zscore_(_pipeline(signals, lead_mask, seeds, cfg, keep_parts=False).views, cfg.eps)
    return v[0].unsqueeze(1), v[1].unsqueeze(1)
