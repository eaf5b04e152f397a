"""RecordRef -> CanonicalRecord | Quarantined: the one function the ingest workers call.

Canonical form (docs/architecture.md): leads in `LEADS` order whatever the source order and
case, absent/unusable leads masked, 500 Hz, the whole record, stored as int16 with a per-lead
gain (ADC units per mV) and baseline so that WFDB's 16-bit digital values pass through
unchanged (lossless).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from clef_model.leads import LEADS, N_LEADS, lead_index
from clef_platform.ingest.read import ChannelInfo, HeaderInfo
from clef_platform.ingest.readers import get_reader
from clef_platform.ingest.record import CanonicalRecord, Quarantined, RecordRef
from clef_platform.ingest.validate import (
    MASKING_FLAGS, RECORD_FLAGS_KEY, Reject, ValidationConfig, check_age, check_duration,
    check_gain, check_sampling_rate, lead_problems,
)

log = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767


@dataclass(frozen=True)
class CanonicalConfig:
    target_fs: int = 500
    max_resample_denominator: int = 1000    # up/down ratio approximated within this
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def process_record(ref: RecordRef, config: CanonicalConfig | None = None
                   ) -> CanonicalRecord | Quarantined:
    """Reads, validates and canonicalises one record. Never raises for bad data: every
    failure becomes a `Quarantined` with a code from validate.REASONS."""
    cfg = config or CanonicalConfig()
    try:
        return _process(ref, cfg)
    except Reject as rej:
        log.info("quarantined %s/%s: %s (%s)", ref.corpus, ref.record_id, rej.reason, rej.detail)
        return Quarantined(ref=ref, reason=rej.reason, detail=rej.detail)
    except Exception as exc:   # a bug or an unforeseen file: keep the corpus going, say so
        log.warning("unexpected error on %s/%s", ref.corpus, ref.record_id, exc_info=True)
        return Quarantined(ref=ref, reason="read_error",
                           detail=f"{ref.source_path}: {type(exc).__name__}: {exc}")


def _process(ref: RecordRef, cfg: CanonicalConfig) -> CanonicalRecord:
    vcfg = cfg.validation
    if not ref.source_path:
        raise Reject("bad_reference", str(ref.labels.get("listing_error")
                                          or f"{ref.corpus}/{ref.record_id}: no source path"))
    check_age(ref.age, f"{ref.corpus}/{ref.record_id} metadata", vcfg)
    reader = get_reader(ref.format)
    header = reader.header(ref.source_path)
    slots = _validate_header(header, vcfg, ref.lead_aliases)
    start, length = _window_span(ref, header)
    digital = reader.read(header, ref.source_path, start, length)
    fs = float(header.fs)   # checked by _validate_header
    check_duration(digital.shape[0], fs, header.path, vcfg)

    record_flags: list[str] = []
    ref = _ecg_time_from_header(ref, header, record_flags)
    for ch in header.channels:
        if _lead_of(ch.name, ref.lead_aliases) is None:
            record_flags.append(f"non_standard_lead:{ch.name}")
        elif ch.name.strip() in ref.lead_aliases:
            record_flags.append(f"lead_alias:{ch.name.strip()}->{ref.lead_aliases[ch.name.strip()]}")
    if any(header.channels[c].samps_per_frame > 1 for c in slots.values()):
        # wfdb averages oversampled channels to the frame rate; say so rather than hide it
        record_flags.append("multi_frequency_averaged_to_frame_rate")

    leads, gains, baselines, mask, flags = _map_leads(header, digital, slots, vcfg)
    if not mask.any():
        problems = "; ".join(f"{LEADS[i]}: {','.join(flags[LEADS[i]])}" for i in range(N_LEADS))
        raise Reject("no_usable_lead", f"{header.path}: {problems}")
    if fs != cfg.target_fs:
        leads = _resample(leads, baselines, fs, cfg)
        record_flags.append(f"resampled_from_{fs:g}Hz")
    out, gains, baselines = _to_int16(leads, gains, baselines, flags)
    if record_flags:
        flags[RECORD_FLAGS_KEY] = record_flags
    source = str(ref.window["parent_sha256"]) if ref.window else reader.source_sha256(header)
    return CanonicalRecord(ref=ref, digital=out, gain=gains.astype(np.float32),
                           baseline=baselines.astype(np.float32), lead_mask=mask,
                           fs_original=fs, quality_flags=flags, source_sha256=source)


def _lead_of(name: str, aliases: dict[str, str]) -> int | None:
    """The canonical lead index of a source channel, through the corpus's aliases."""
    return lead_index(aliases.get(name.strip(), name))


def _window_span(ref: RecordRef, header: HeaderInfo) -> tuple[int, int | None]:
    """(first sample, samples) to read: the ref's window, or the whole record."""
    w = ref.window
    if not w:
        return 0, None
    start, length = int(w["start"]), int(w["length"])
    if header.sig_len is not None and start + length > header.sig_len:
        raise Reject("too_short", f"{header.path}: {header.sig_len} samples, window "
                                  f"{w['index']} needs samples {start}..{start + length}")
    return start, length


def _validate_header(header: HeaderInfo, vcfg: ValidationConfig,
                     aliases: dict[str, str]) -> dict[int, int]:
    """Record-level header checks; returns canonical lead index -> channel index."""
    if header.n_sig == 0:
        raise Reject("absurd_header_value", f"{header.path}: the record has no channels")
    check_sampling_rate(header.fs, header.path, vcfg)
    seen: dict[str, int] = {}
    slots: dict[int, int] = {}
    for c, ch in enumerate(header.channels):
        idx = _lead_of(ch.name, aliases)
        key = LEADS[idx].upper() if idx is not None else ch.name.strip().upper()
        if key in seen:
            raise Reject("duplicate_lead_names",
                         f"{header.path}: channels {seen[key] + 1} and {c + 1} are both "
                         f"named {ch.name!r}")
        seen[key] = c
        if idx is not None:
            # Only standard leads need a calibration we trust; extra channels are dropped.
            check_gain(ch.gain, ch.name, header.path)
            slots[idx] = c
    if header.sig_len is not None:
        check_duration(header.sig_len, float(header.fs), header.path, vcfg)
    return slots


def _ecg_time_from_header(ref: RecordRef, header: HeaderInfo, record_flags: list[str]
                          ) -> RecordRef:
    """The header's base date and time is the recording time where it exists (MIMIC-IV-ECG);
    a listing table that disagrees is noted, not trusted."""
    if not header.base_datetime or header.base_datetime == ref.ecg_time:
        return ref
    if ref.ecg_time:
        record_flags.append(f"ecg_time_listing_differs:{ref.ecg_time}")
    return dataclasses.replace(ref, ecg_time=header.base_datetime)


def _map_leads(header: HeaderInfo, digital: np.ndarray, slots: dict[int, int],
               vcfg: ValidationConfig):
    """Source channels -> canonical rows (integer, source fs) with gain (ADC/mV), baseline,
    mask and per-lead flags.

    The rows keep the reader's dtype (int16 for 16-bit files) when every baseline fits it, so
    a 16-bit record goes to storage without widening; a source already in canonical lead
    order is used as it is (a view of the samples, which the reader made for this record).
    """
    t = digital.shape[0]
    gains = np.ones(N_LEADS, dtype=np.float64)
    baselines = np.zeros(N_LEADS, dtype=np.float64)
    mask = np.zeros(N_LEADS, dtype=bool)
    flags: dict[str, list[str]] = {}
    present: list[tuple[int, int, ChannelInfo, float]] = []   # (lead, channel, info, ADC/mV)
    for i, name in enumerate(LEADS):
        c = slots.get(i)
        if c is None:
            flags[name] = ["absent"]
            continue
        ch: ChannelInfo = header.channels[c]
        if ch.mv_per_unit is None:
            flags[name] = ["non_voltage_units"]
            continue
        present.append((i, c, ch, float(ch.gain) / ch.mv_per_unit))
    dtype = digital.dtype
    info = np.iinfo(dtype)
    if not all(info.min <= ch.baseline <= info.max for _, _, ch, _ in present):
        dtype = np.dtype(np.int64)
    rows = [i for i, _, _, _ in present]
    if (rows == list(range(N_LEADS)) and [c for _, c, _, _ in present] == rows
            and digital.shape[1] == N_LEADS and digital.dtype == dtype):
        leads = digital.T                 # canonical order already: no copy
    else:
        leads = np.zeros((N_LEADS, t), dtype=dtype)
        for i, c, _, _ in present:
            leads[i] = digital[:, c]
    if not present:
        return leads, gains, baselines, mask, flags
    checks = lead_problems(leads[rows] if len(rows) < N_LEADS else leads,
                           [ch.invalid_value() for _, _, ch, _ in present],
                           [ch.digital_limits() for _, _, ch, _ in present],
                           [g for _, _, _, g in present], vcfg)
    for (i, _, ch, gain_mv), (lead_flags, invalid) in zip(present, checks):
        if invalid is not None:
            leads[i, invalid] = ch.baseline   # 0 mV: keeps the int16 path and the samples' timing
        gains[i], baselines[i] = gain_mv, ch.baseline
        if lead_flags:
            flags[LEADS[i]] = lead_flags
        mask[i] = not (set(lead_flags) & MASKING_FLAGS)
    return leads, gains, baselines, mask, flags


def _resample(leads: np.ndarray, baselines: np.ndarray, fs: float, cfg: CanonicalConfig
              ) -> np.ndarray:
    """Polyphase resampling to the target rate, re-quantised at each lead's original gain."""
    from scipy.signal import resample_poly   # only workers that meet non-500 Hz data need it

    ratio = Fraction(cfg.target_fs / fs).limit_denominator(cfg.max_resample_denominator)
    centred = leads.astype(np.float64) - baselines[:, None]
    res = resample_poly(centred, ratio.numerator, ratio.denominator, axis=1)
    # baselines may be fractional (EDF's ranges): added before rounding
    return np.rint(res + baselines[:, None]).astype(np.int64)


def _to_int16(leads: np.ndarray, gains: np.ndarray, baselines: np.ndarray,
              flags: dict[str, list[str]]):
    """int16 storage: lossless when a lead's values fit (all 16-bit formats do); otherwise
    centred on the baseline and, only if still too wide, re-quantised with a finer scale."""
    if leads.dtype == np.int16:
        return leads, gains, baselines    # a 16-bit source: stored as read
    gains, baselines = gains.copy(), baselines.copy()
    out = np.empty(leads.shape, dtype=np.int16)
    if leads.shape[1] == 0:
        return out, gains, baselines
    lows, highs = leads.min(axis=1).tolist(), leads.max(axis=1).tolist()
    for i, x in enumerate(leads):
        if lows[i] >= INT16_MIN and highs[i] <= INT16_MAX:
            out[i] = x
            continue
        centred = x - int(baselines[i])
        peak = max(abs(lows[i] - int(baselines[i])), abs(highs[i] - int(baselines[i])))
        if peak <= INT16_MAX:
            out[i] = centred
        else:
            scale = INT16_MAX / peak
            out[i] = np.rint(centred * scale).astype(np.int16)
            gains[i] *= scale
            flags.setdefault(LEADS[i], []).append("requantised_int16")
        baselines[i] = 0.0
    return out, gains, baselines
