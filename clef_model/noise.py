"""ECG noise for CLEF views: a counter-based tensor RNG, synthetic noise models, real recordings.

CLEF adds segments of the MIT-BIH Noise Stress Test recordings (ma, em, bw) to its views. Those
recordings are not shipped here, so each kind has a synthetic model (below); real recordings are
used instead when the platform hands their arrays over (`NoiseRecordings`, read from a folder
by clef_platform.layout.noise; this package reads no files).

Everything random is drawn from a counter-based generator: a value depends only on (per-row
seed, stream id, position), never on the batch the row sits in, the device, or call order. That
is what lets a record get the same views in any loader worker or on the GPU.

Noise kinds, in the order used everywhere here (component index 0, 1, 2):
  motion    NSTDB 'ma' (muscle / motion artefact): broadband EMG-like noise in bursts.
            Model: white Gaussian noise band-passed 20-150 Hz (upper edge capped at 0.45 fs),
            amplitude-modulated by an envelope = 0.3 floor + Gaussian bursts (0.1-0.5 s wide,
            about 0.5 bursts/s), the way muscle activity and cable motion come and go.
  electrode NSTDB 'em' (electrode motion): abrupt shifts of the electrode-skin potential that
            relax back. Model: step transients a*exp(-(t-t0)/tau) (tau 0.05-0.5 s, about 0.3
            events/s, Gaussian amplitudes) plus 0-10 Hz noise bursts around each event, all
            low-passed at 15 Hz (the jumps are fast but not instantaneous).
  baseline  NSTDB 'bw' (baseline wander): respiration and slow drift. Model: four sinusoids at
            0.05-0.5 Hz with random amplitude and phase, plus a respiration sinusoid at
            0.2-0.4 Hz whose amplitude is slowly modulated (0.02-0.1 Hz).
Each component is returned with unit RMS per row; views.py mixes and scales them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np
import torch

KINDS: tuple[str, ...] = ("motion", "electrode", "baseline")  # component order
NSTDB_RECORDS: tuple[str, ...] = ("ma", "em", "bw")  # the real recording for each kind

# ---------------------------------------------------------------------------------------------
# Counter-based RNG (splitmix64 on int64 tensors)


def _s64(c: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    c &= (1 << 64) - 1
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _s64(0x9E3779B97F4A7C15)
_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic (sign-extends); splitmix needs a logical shift.
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (multiplication wraps mod 2^64 as two's complement)."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def stable_seed(*parts: object) -> int:
    """A seed in [0, 2^63) from a stable hash of the parts' text (never Python's salted hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def random_bits(seeds: torch.Tensor, stream: int | torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] int64 of pseudo-random bits: element (b, i) = f(seeds[b], stream[b], i) only.
    stream is one int for all rows or an int64 tensor [B] (e.g. the view index of each row)."""
    seeds = seeds.to(torch.int64)
    if isinstance(stream, torch.Tensor):
        key = mix64(seeds + stream.to(seeds.device, torch.int64) * _GOLDEN)  # wraps mod 2^64
    else:
        key = mix64(seeds + _s64(stream * _GOLDEN))
    ctr = torch.arange(1, n + 1, device=seeds.device, dtype=torch.int64) * _GOLDEN
    return mix64(key[:, None] + ctr)


def uniform(seeds: torch.Tensor, stream: int | torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] float32 uniform in the open interval (0, 1) (24-bit resolution; float32 keeps every
    device happy and log(u) finite)."""
    return (_srl(random_bits(seeds, stream, n), 40).to(torch.float32) + 0.5) * 2.0 ** -24


def uniform_streams(seeds: torch.Tensor, consts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[B, S, n] float32: [:, s, i] equals uniform(seeds, streams[s], n)[:, i] exactly, for S
    streams drawn in one pass (two mix64 rounds over [B, S] and [B, S, n] instead of 2 S
    rounds). consts = stream_consts(streams, n, device)."""
    keys, ctr = consts
    key = mix64(seeds.to(torch.int64)[:, None] + keys)  # wraps mod 2^64, as in random_bits
    bits = _srl(mix64(key[:, :, None] + ctr), 40)
    return (bits.to(torch.float32) + 0.5) * 2.0 ** -24


@lru_cache(maxsize=32)
def stream_consts(streams: tuple[int, ...], n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stream key offsets [S] and counters [n] for uniform_streams (cached per device)."""
    keys = torch.tensor([_s64(s * _GOLDEN) for s in streams], dtype=torch.int64, device=device)
    ctr = torch.arange(1, n + 1, device=device, dtype=torch.int64) * _GOLDEN
    return keys, ctr


def normal(seeds: torch.Tensor, stream: int | torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] float32 standard normal (Box-Muller on two uniform halves of one stream)."""
    u = uniform(seeds, stream, 2 * n)
    r = torch.sqrt(-2.0 * torch.log(u[:, :n]))
    return r * torch.cos(2 * math.pi * u[:, n:])


def randint(u: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Integers in [0, n) from uniforms u (clamped: float32 rounding of u*n may reach n)."""
    if not isinstance(n, torch.Tensor):  # u * n is float32 either way (the int is cast to float32)
        n = int(n)
        return (u * n).floor_().to(torch.int64).clamp_(0, max(n - 1, 0))
    n = n.to(u.device, torch.int64)
    k = (u * n.to(torch.float32)).floor_().to(torch.int64)
    return torch.minimum(k, n - 1).clamp_min_(0)


# ---------------------------------------------------------------------------------------------
# Synthetic models (batched; rows are independent and depend only on their seed)


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def _fft_filter(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Circular zero-phase filter; fine for noise, which has no edges worth preserving."""
    return torch.fft.irfft(torch.fft.rfft(x) * gain, n=x.shape[-1])


def _butter_mag(f: torch.Tensor, fc: float, order: int, high: bool) -> torch.Tensor:
    """Analog Butterworth magnitude (a smooth band edge for noise shaping)."""
    r = (fc / f.clamp_min(1e-9)) if high else (f / fc)
    return 1.0 / torch.sqrt(1.0 + r ** (2 * order))


def _events(seeds: torch.Tensor, stream: int, length: int, fs: float, rate_hz: float):
    """Up to K candidate events per row (K from the expected count), each active with p=0.6 so
    the event count varies per row without ragged tensors (the first is always active). Returns uniforms [B, K, 4] and the
    active mask [B, K]."""
    k = max(1, math.ceil(rate_hz * length / fs / 0.6))
    u = uniform(seeds, stream, 5 * k).view(-1, k, 5)
    active = u[..., 0] < 0.6
    active[:, 0] = True  # at least one event, so no row is silent
    return u[..., 1:], active


def baseline_wander(seeds: torch.Tensor, length: int, fs: float, stream: int | torch.Tensor = 0) -> torch.Tensor:
    """[B, length] unit-RMS baseline wander (see the module docstring)."""
    dev = seeds.device
    t = torch.arange(length, device=dev, dtype=torch.float32) / fs
    u = uniform(seeds, _stream(stream, 1), 16)
    f = 0.05 + 0.45 * u[:, 0:4]  # drift sinusoids, Hz
    amp = 0.3 + 0.7 * u[:, 4:8]
    ph = 2 * math.pi * u[:, 8:12]
    x = (amp[..., None] * torch.sin(2 * math.pi * f[..., None] * t + ph[..., None])).sum(1)
    f_r = 0.2 + 0.2 * u[:, 12:13]  # respiration
    f_m = 0.02 + 0.08 * u[:, 13:14]  # its amplitude modulation
    env = 1.0 + 0.3 * torch.sin(2 * math.pi * f_m * t + 2 * math.pi * u[:, 14:15])
    x = x + 1.5 * env * torch.sin(2 * math.pi * f_r * t + 2 * math.pi * u[:, 15:16])
    return _unit_rms(x)


def _local_sum(t0: torch.Tensor, half: int, length: int, fn) -> torch.Tensor:
    """Sum over events of fn(dt) on a window of +-half samples around each event start t0
    [B, K] (in samples): O(K * window) rather than O(K * length). dt [B, K, 2*half] is in
    samples relative to t0. Windows falling off either end are cut by the padded buffer."""
    b, k = t0.shape
    dev = t0.device
    d = torch.arange(-half, half, device=dev)
    vals = fn(d.to(torch.float32).expand(b, k, -1))
    pos = (t0.long()[..., None] + d + half).reshape(b, -1)  # index into a buffer padded by half
    out = torch.zeros(b, length + 2 * half, device=dev)
    out.scatter_add_(1, pos, vals.reshape(b, -1))  # atomics on CUDA: float-rounding-level jitter
    return out[:, half:half + length]


def electrode_motion(seeds: torch.Tensor, length: int, fs: float, stream: int | torch.Tensor = 0) -> torch.Tensor:
    """[B, length] unit-RMS electrode-motion artefact (see the module docstring)."""
    dev = seeds.device
    u, active = _events(seeds, _stream(stream, 2), length, fs, rate_hz=0.3)
    t0 = u[..., 0] * length
    tau = (0.05 + 0.45 * u[..., 1:2]) * fs  # samples
    amp = torch.sqrt(-2 * torch.log(u[..., 2:3])) * torch.cos(2 * math.pi * u[..., 3:4])
    amp = amp * active[..., None]
    # step with exponential recovery (window 8 tau_max: the cut-off is below 1e-3 of the step)
    steps = _local_sum(t0, int(4.0 * fs), length,
                       lambda dt: amp * torch.exp(-dt.clamp_min(0) / tau) * (dt >= 0))
    # low-frequency noise bursts around the events (the electrode keeps rubbing for a while)
    burst = _local_sum(t0, int(4.0 * fs), length,
                       lambda dt: active[..., None] * torch.exp(-0.5 * (dt / (2 * tau)) ** 2))
    f = torch.fft.rfftfreq(length, 1.0 / fs).to(dev)
    lf = _fft_filter(normal(seeds, _stream(stream, 3), length), _butter_mag(f, 10.0, 2, False))
    x = steps + 0.3 * burst * _unit_rms(lf)
    return _unit_rms(_fft_filter(x, _butter_mag(f, 15.0, 2, False)))


def muscle_artifact(seeds: torch.Tensor, length: int, fs: float, stream: int | torch.Tensor = 0) -> torch.Tensor:
    """[B, length] unit-RMS muscle/motion artefact (see the module docstring)."""
    dev = seeds.device
    f = torch.fft.rfftfreq(length, 1.0 / fs).to(dev)
    hi = min(150.0, 0.45 * fs)  # Nyquist-limited upper edge
    gain = _butter_mag(f, 20.0, 4, True) * _butter_mag(f, hi, 4, False)
    x = _fft_filter(normal(seeds, _stream(stream, 4), length), gain)
    u, active = _events(seeds, _stream(stream, 5), length, fs, rate_hz=0.5)
    width = (0.1 + 0.4 * u[..., 1:2]) * fs  # samples; the window is +-4 widths at most
    amp = (0.5 + 1.5 * u[..., 2:3]) * active[..., None]
    env = 0.3 + _local_sum(u[..., 0] * length, int(2.0 * fs), length,
                           lambda dt: amp * torch.exp(-0.5 * (dt / width) ** 2))
    return _unit_rms(x * env)


def _stream(base, sub: int):
    return base * 16 + sub


def synthetic_components(seeds: torch.Tensor, length: int, fs: float, stream: int | torch.Tensor = 0) -> torch.Tensor:
    """[B, 3, length] unit-RMS (motion, electrode, baseline) components for each row."""
    return torch.stack([muscle_artifact(seeds, length, fs, stream),
                        electrode_motion(seeds, length, fs, stream),
                        baseline_wander(seeds, length, fs, stream)], 1)


# ---------------------------------------------------------------------------------------------
# Noise banks: long recordings (real, or synthesised once) from which views take seeded segments


@dataclass
class NoiseBank:
    """One [channels, samples] float32 tensor per kind (KINDS order), all at `fs`.

    A view's noise is a segment of one channel at a seeded offset, as CLEF takes segments of the
    NSTDB recordings. Synthesising a bank once and slicing it is ~100x cheaper per view than
    synthesising fresh noise, which matters on CPU loader workers.
    """

    recordings: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # each channel zero-mean, unit RMS
    fs: float
    source: str  # "synthetic" or where the recordings came from

    def to(self, device: torch.device | str) -> "NoiseBank":
        return NoiseBank(tuple(r.to(device) for r in self.recordings), self.fs, self.source)

    def draw(self, kind: int, u_channel: torch.Tensor, u_offset: torch.Tensor,
             length: int) -> torch.Tensor:
        """[R, length] segments of recording `kind` at the channel/offset the uniforms pick."""
        rec = self.recordings[kind]
        c, n = rec.shape
        if n < length:
            raise ValueError(f"noise recording for {KINDS[kind]} has {n} samples at {self.fs} Hz, "
                             f"shorter than the view length {length}")
        # unfold is a strided view of every window; indexing copies only the chosen rows
        return rec.unfold(1, length, 1)[randint(u_channel, c), randint(u_offset, n - length + 1)]

    def segments(self, seeds: torch.Tensor, stream: int | torch.Tensor, length: int) -> torch.Tensor:
        """[B, 3, length] segments, one per kind, at offsets drawn from (seed, stream)."""
        u = uniform(seeds, stream, 6)
        return torch.stack([self.draw(k, u[:, 2 * k], u[:, 2 * k + 1], length) for k in range(3)], 1)


@dataclass(frozen=True, eq=False)
class FlatBank:
    """A NoiseBank laid out for one-gather segment draws: every channel of every kind end to end
    in one float32 vector, so a segment at (kind, channel, offset) is row `start` of the strided
    view windows(length) (all windows of the vector; no copy), and a batch of segments of mixed
    kinds is a single index_select. energy is the float64 running sum of squares (leading 0):
    a segment's sum of squares is energy[start + length] - energy[start], no pass over it."""

    flat: torch.Tensor  # [total] float32
    base: torch.Tensor  # [3] int64: where kind k's first channel starts in flat
    channels: torch.Tensor  # [3] int64
    samples: torch.Tensor  # [3] int64 per channel
    energy: torch.Tensor  # [total + 1] float64
    shortest: int  # samples of the shortest recording (views no longer than it need no check)

    def windows(self, length: int) -> torch.Tensor:
        return self.flat.as_strided((self.flat.numel() - length + 1, length), (1, 1))

    def starts(self, kind: torch.Tensor, u_channel: torch.Tensor, u_offset: torch.Tensor,
               length: int) -> torch.Tensor:
        """Flat start of the segment NoiseBank.draw(kind, u_channel, u_offset) takes, per row
        (kind is a tensor here: one gather serves rows of different kinds)."""
        return self.starts2(kind, torch.stack([u_channel, u_offset], 1), length)

    def starts2(self, kind: torch.Tensor, u: torch.Tensor, length: int) -> torch.Tensor:
        """starts() with the (channel, offset) uniforms as one [R, 2] tensor (one randint)."""
        n = self.samples[kind]
        if length > self.shortest and bool((n < length).any()):
            k = int(kind[n < length][0])
            raise ValueError(f"noise recording for {KINDS[k]} has {int(self.samples[k])} samples, "
                             f"shorter than the view length {length}")
        co = randint(u, torch.stack([self.channels[kind], n - (length - 1)], 1))
        return co[:, 0].mul_(n).add_(self.base[kind]).add_(co[:, 1])

    def sum_sq(self, start: torch.Tensor, length: int) -> torch.Tensor:
        """float64 sum of squares of the segments at flat starts `start`."""
        return self.energy[start + length] - self.energy[start]


def flat_bank(bank: NoiseBank) -> FlatBank:
    recs = [r.to(torch.float32).contiguous() for r in bank.recordings]
    flat = torch.cat([r.reshape(-1) for r in recs])
    sizes = torch.tensor([r.numel() for r in recs], dtype=torch.int64)
    base = torch.cumsum(sizes, 0) - sizes
    energy = torch.zeros(flat.numel() + 1, dtype=torch.float64, device=flat.device)
    torch.cumsum(flat.double().square(), 0, out=energy[1:])
    dev = flat.device
    return FlatBank(flat, base.to(dev), torch.tensor([r.shape[0] for r in recs], device=dev),
                    torch.tensor([r.shape[1] for r in recs], device=dev), energy,
                    min(r.shape[1] for r in recs))


@lru_cache(maxsize=8)
def cached_flat_bank(recordings: NoiseRecordings | None, fs: float, seed: int,
                     device: str) -> FlatBank:
    """flat_bank(cached_bank(...)), built once per (recordings, fs, seed, device)."""
    return flat_bank(cached_bank(recordings, fs, seed, device))


def synthetic_bank(seed: int, fs: float = 500.0, channels: int = 8, seconds: float = 60.0,
                   device: torch.device | str = "cpu") -> NoiseBank:
    """A bank of synthetic recordings (channels x seconds per kind) generated batched from seed."""
    n = int(round(seconds * fs))
    seeds = torch.tensor([stable_seed(seed, "noise-bank", c) for c in range(channels)],
                         dtype=torch.int64, device=device)
    comps = synthetic_components(seeds, n, fs)
    return NoiseBank(tuple(comps[:, k].contiguous() for k in range(3)), fs, "synthetic")


@dataclass(frozen=True, eq=False)
class NoiseRecordings:
    """Real noise recordings as arrays, by kind (KINDS names): each a float [channels, samples]
    array at its own sampling rate. clef_model never reads files: the platform reads the noise
    folder (clef_platform.layout.noise) and hands the arrays here. `digest` names the content
    (a view's noise depends on it), so two copies of the same recordings share one cached bank.
    """

    arrays: tuple[tuple[str, np.ndarray, float], ...]   # (kind, [channels, samples], fs)
    digest: str
    source: str = ""                                      # where they came from, for logs

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, NoiseRecordings) and other.digest == self.digest


def noise_recordings(arrays: dict[str, tuple[np.ndarray, float]], source: str = "") -> NoiseRecordings:
    """NoiseRecordings from {kind: (array [channels, samples], fs)}; checks kinds and shapes."""
    h = hashlib.sha256()
    out = []
    for kind in KINDS:
        if kind not in arrays:
            continue
        x, fs = arrays[kind]
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] < 2 or not math.isfinite(fs) or fs <= 0:
            raise ValueError(f"{source or 'noise'}: {kind} must be [channels, samples] at fs > 0, "
                             f"got shape {x.shape} at {fs} Hz")
        h.update(f"{kind}:{x.shape}:{fs}".encode())
        h.update(x.tobytes())
        out.append((kind, x, float(fs)))
    unknown = set(arrays) - set(KINDS)
    if unknown or not out:
        raise ValueError(f"{source or 'noise'}: kinds must be among {KINDS}, got {sorted(arrays)}")
    return NoiseRecordings(tuple(out), h.hexdigest(), source)


def _resampled(x: np.ndarray, fs_in: float, fs: float) -> torch.Tensor:
    from scipy.signal import resample_poly

    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x).all(1)]
    if len(x) == 0:
        raise ValueError("a noise recording has no finite channel")
    ratio = Fraction(fs / fs_in).limit_denominator(1000)
    if ratio != 1:  # polyphase with an anti-alias FIR: NSTDB is 360 Hz, views are 500 Hz
        x = resample_poly(x, ratio.numerator, ratio.denominator, axis=1)
    x = x - x.mean(1, keepdims=True)  # ADC offsets are not noise
    # unit RMS per channel: views rescale every segment anyway; this only sets mixture balance
    x = x / np.maximum(np.sqrt((x * x).mean(1, keepdims=True)), 1e-12)
    return torch.from_numpy(x.astype(np.float32))


def load_noise_bank(recordings: NoiseRecordings | None, fs: float = 500.0,
                    seed: int = 0) -> NoiseBank:
    """The bank of `recordings` (resampled to fs, unit RMS per channel); a kind they do not hold
    falls back to its synthetic model. recordings=None: fully synthetic."""
    synth = synthetic_bank(seed, fs)
    if recordings is None:
        return synth
    real = {kind: _resampled(x, fs_in, fs) for kind, x, fs_in in recordings.arrays}
    recs = tuple(real.get(kind, synth.recordings[k]) for k, kind in enumerate(KINDS))
    return NoiseBank(recs, fs, recordings.source or recordings.digest[:12])


@lru_cache(maxsize=8)
def cached_bank(recordings: NoiseRecordings | None, fs: float, seed: int,
                device: str) -> NoiseBank:
    """Build or synthesise once per (recordings, fs, seed, device); views call this every
    batch."""
    if device == "cpu":
        return load_noise_bank(recordings, fs, seed)
    return cached_bank(recordings, fs, seed, "cpu").to(device)
