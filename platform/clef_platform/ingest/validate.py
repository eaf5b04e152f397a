"""Validation rules: the stable quarantine reason codes, thresholds, and lead-level checks.

Two levels, on purpose:
- record level: the record as a whole cannot be trusted (its header, file or length is wrong);
  it is quarantined with one code from `REASONS` and a detail naming the file or field.
- lead level: a problem confined to some leads (flat, invalid, saturated, non-standard name);
  those leads are masked and flagged, the record is kept.

The codes are part of the dataset contract (quarantine.parquet stores them): never rename one,
only add. docs/ingestion.md carries the same list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REASONS: dict[str, str] = {
    "bad_reference": "the adapter's listing row does not name a usable record "
                     "(non-numeric id, unsafe or empty path); fix the listing table",
    "missing_header_file": "the WFDB header (.hea) named by the listing does not exist",
    "garbled_header": "the header cannot be parsed: malformed record or signal line, wrong "
                      "number of signal lines, non-numeric fields, binary bytes",
    "unsupported_format": "a WFDB variant ingestion does not take (multi-segment record, "
                          "unknown storage format)",
    "missing_signal_file": "a signal file (.dat/.mat) named in the header does not exist",
    "truncated_signal_file": "the signal file ends part-way through a sample frame, shorter "
                             "than the header declares (interrupted copy or download)",
    "header_length_mismatch": "the signal file holds a whole number of frames, but not the "
                              "number of samples the header declares",
    "unreadable_signal": "wfdb could not decode the signal file",
    "invalid_sampling_rate": "sampling frequency missing, not a number, or outside the "
                             "plausible ECG range (min_fs-max_fs, default 50-20000 Hz)",
    "duplicate_lead_names": "two channels carry the same lead name (case-insensitive), so "
                            "the lead mapping is ambiguous",
    "absurd_header_value": "a header or metadata value is impossible: ADC gain <= 0 or "
                           "missing (uncalibrated) on a standard lead, age outside 0-125, "
                           "no channels",
    "too_short": "shorter than the minimum duration (10 s: a CLEF view needs 5000 samples "
                 "at 500 Hz)",
    "no_usable_lead": "no standard lead survives the lead-level checks (all absent, flat, "
                      "invalid or saturated)",
    "read_error": "an unexpected error while reading; the detail has the exception (report it: "
                  "it is probably a missing rule or a bug)",
}

# Lead-level quality flags (stored in CanonicalRecord.quality_flags[lead]). Masking ones first.
LEAD_FLAGS: dict[str, str] = {
    "absent": "the source has no channel for this lead (masked)",
    "flat": "peak-to-peak amplitude below flat_ptp_mv (masked)",
    "all_invalid": "every sample is the format's invalid value or NaN (masked)",
    "saturated": "at least saturated_fraction of samples sit at the ADC limits (masked)",
    "non_voltage_units": "the channel's units are not a voltage (masked)",
    "invalid_samples": "some samples were invalid; replaced by the baseline (0 mV), kept",
    "clipped_samples": "some samples at the ADC limits, fewer than saturated_fraction, kept",
}
MASKING_FLAGS = frozenset({"absent", "flat", "all_invalid", "saturated", "non_voltage_units"})

# Record-level quality flags live under this key of quality_flags (not a lead name).
RECORD_FLAGS_KEY = "record"


@dataclass(frozen=True)
class ValidationConfig:
    min_duration_s: float = 10.0
    min_fs: float = 50.0            # below this an ECG is useless for CLEF's views
    max_fs: float = 20_000.0
    max_age: float = 125.0
    flat_ptp_mv: float = 0.01       # 10 uV peak to peak over the whole record: no signal
    saturated_fraction: float = 0.05


class Reject(Exception):
    """Raised inside reading/canonicalisation to quarantine a record; never escapes
    `process_record`, which turns it into a `Quarantined`."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_sampling_rate(fs: float | None, where: str, cfg: ValidationConfig) -> None:
    if fs is None or not math.isfinite(fs) or not (cfg.min_fs <= fs <= cfg.max_fs):
        raise Reject("invalid_sampling_rate",
                     f"{where}: sampling frequency {fs!r} Hz is outside "
                     f"[{cfg.min_fs:g}, {cfg.max_fs:g}]")


def check_age(age: float | None, where: str, cfg: ValidationConfig) -> None:
    if age is not None and not (0.0 <= age <= cfg.max_age):
        raise Reject("absurd_header_value", f"{where}: age {age:g} is outside 0-{cfg.max_age:g}")


def check_gain(gain: float | None, channel: str, where: str) -> None:
    if gain is None or not math.isfinite(gain) or gain <= 0:
        raise Reject("absurd_header_value",
                     f"{where}: channel {channel!r} has ADC gain {gain!r} (must be > 0; "
                     "0 or missing means uncalibrated)")


def check_duration(n_samples: int, fs: float, where: str, cfg: ValidationConfig) -> None:
    if n_samples < round(cfg.min_duration_s * fs):
        raise Reject("too_short",
                     f"{where}: {n_samples} samples at {fs:g} Hz = {n_samples / fs:.2f} s "
                     f"< {cfg.min_duration_s:g} s")


def lead_problems(digital: np.ndarray, invalid_values: list[int | None],
                  limits: list[tuple[int, int]], gains_per_mv: list[float],
                  cfg: ValidationConfig) -> list[tuple[list[str], np.ndarray | None]]:
    """Lead-level checks on the digital samples of several leads at once (`digital` [k, T] of
    any integer dtype, one row per lead, with its invalid value, ADC rails and gain): per lead,
    its flags and its invalid-sample mask (None when no sample is invalid).

    Masking flags are those in MASKING_FLAGS; the caller replaces invalid samples by the
    baseline. Saturation counts samples on the ADC rails (`limits`), not the lead's own range,
    so a large but unclipped QRS is never called saturated.

    Why two paths: this is the costliest part of a record's ingest after reading it. One min
    and one max per lead (two passes over the block, in its own dtype) settle the common case,
    a lead whose range touches neither a rail nor the invalid value; only the other leads get
    sample masks.
    """
    t = digital.shape[1]
    lows, highs = digital.min(axis=1).tolist(), digital.max(axis=1).tolist()
    out = []
    for j, row in enumerate(digital):
        inv, (lo, hi), low, high = invalid_values[j], limits[j], lows[j], highs[j]
        if low > lo and high < hi and (inv is None or not low <= inv <= high):
            flat = (high - low) / gains_per_mv[j] < cfg.flat_ptp_mv
            out.append((["flat"] if flat else [], None))
            continue
        invalid = row == inv if inv is not None and low <= inv <= high else None
        n_invalid = int(np.count_nonzero(invalid)) if invalid is not None else 0
        if n_invalid == t:
            out.append((["all_invalid"], invalid))
            continue
        valid = row[~invalid] if n_invalid else row
        flags: list[str] = ["invalid_samples"] if n_invalid else []
        at_rail = int(np.count_nonzero((valid <= lo) | (valid >= hi)))
        if at_rail >= cfg.saturated_fraction * valid.size:
            flags.append("saturated")
        elif at_rail:
            flags.append("clipped_samples")
        if (int(valid.max()) - int(valid.min())) / gains_per_mv[j] < cfg.flat_ptp_mv:
            flags.append("flat")
        out.append((flags, invalid if n_invalid else None))
    return out
