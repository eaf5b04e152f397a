"""Long recordings cut into window records (a corpus spec's `windows:` policy).

A 30-minute Holter record stored whole is one huge sample that every training read loads to cut
10 s from it; cut at ingest, each window is a record of its own that keeps the patient id, the
parent record's id, its offset and the parent's digest. Windows are planned from the header at
listing time (no signal read) and each window task reads only its own samples (wfdb's
sampfrom/sampto, or an offset read of a 16-bit file), so memory stays at one window whatever
the record's length.

    windows:
      length_s: 10          # each window (> 0)
      hop_s: 10             # start to start (> 0; default: length_s, no overlap)
      start_s: 0            # where the first window starts (>= 0)
      remainder: drop       # drop: a last partial window is left out; end: one more window
                            #   ending at the record's end (it overlaps the one before)
      max_windows: 1000     # at most this many per record (>= 1; default: no limit)

The parent digest is the reader's SHA-256 of the record's samples as stored (its signal files,
streamed in chunks), so every window of one record names the same parent, and the same files
give the same digest in any dataset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

from clef_platform.ingest.record import RecordRef

REMAINDERS = ("drop", "end")


@dataclass(frozen=True)
class WindowPolicy:
    length_s: float
    hop_s: float
    start_s: float = 0.0
    remainder: str = "drop"
    max_windows: int | None = None


@dataclass(frozen=True)
class Window:
    """One window of a parent record, in the parent's samples at its own rate."""
    parent_record_id: str
    index: int
    start: int                  # first sample (source rate)
    length: int                 # samples (source rate)
    fs: float                   # the parent's sampling rate
    parent_sha256: str


def parse_policy(raw, fail) -> WindowPolicy:
    """A checked policy from a spec's `windows:` mapping; `fail(field, reason)` builds the error."""
    known = {f.name for f in dataclasses.fields(WindowPolicy)}
    if not isinstance(raw, dict):
        raise fail("windows", "expected a mapping with length_s (and hop_s, start_s, remainder, "
                              "max_windows)")
    unknown = set(raw) - known
    if unknown:
        raise fail(f"windows.{sorted(unknown)[0]}", f"unknown field; known: {sorted(known)}")
    if "length_s" not in raw:
        raise fail("windows.length_s", "missing")

    def seconds(name: str, value, positive: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail(f"windows.{name}", f"expected a number of seconds, not {value!r}")
        if value < 0 or (positive and value == 0):
            raise fail(f"windows.{name}", f"must be {'> 0' if positive else '>= 0'}, got {value!r}")
        return float(value)

    length = seconds("length_s", raw["length_s"], True)
    hop = seconds("hop_s", raw.get("hop_s", length), True)
    start = seconds("start_s", raw.get("start_s", 0), False)
    remainder = raw.get("remainder", "drop")
    if remainder not in REMAINDERS:
        raise fail("windows.remainder", f"expected one of {', '.join(REMAINDERS)}, not {remainder!r}")
    most = raw.get("max_windows")
    if most is not None and (isinstance(most, bool) or not isinstance(most, int) or most < 1):
        raise fail("windows.max_windows", f"expected a whole number >= 1, not {most!r}")
    return WindowPolicy(length, hop, start, remainder, most)


def plan(policy: WindowPolicy, n_samples: int, fs: float) -> list[tuple[int, int]]:
    """(start, length) of each window of a record of `n_samples` at `fs`, in source samples.
    A record shorter than one window gets one window that runs past its end: reading it
    quarantines the record as too short, instead of it disappearing from the counts."""
    length = round(policy.length_s * fs)
    hop = max(1, round(policy.hop_s * fs))
    first = round(policy.start_s * fs)
    starts = list(range(first, n_samples - length + 1, hop)) if n_samples - first >= length else []
    if policy.remainder == "end" and n_samples - first >= length:
        last = n_samples - length
        if starts[-1] != last:
            starts.append(last)
    if not starts:
        starts = [first]
    if policy.max_windows is not None:
        starts = starts[: policy.max_windows]
    return [(s, length) for s in starts]


def window_refs(ref: RecordRef, policy: WindowPolicy) -> Iterator[RecordRef]:
    """The window records of `ref`. A record whose header cannot be read or whose signal
    files are missing is listed whole: reading it quarantines it with the reason."""
    from clef_platform.ingest.readers import get_reader
    from clef_platform.ingest.validate import Reject

    reader = get_reader(ref.format)
    try:
        header = reader.header(ref.source_path)
        if not header.fs or header.sig_len is None:
            raise Reject("absurd_header_value", "no sampling rate or length")
        digest = reader.source_sha256(header)
    except (Reject, OSError):
        yield ref
        return
    for i, (start, length) in enumerate(plan(policy, header.sig_len, float(header.fs))):
        w = Window(ref.record_id, i, start, length, float(header.fs), digest)
        yield dataclasses.replace(ref, record_id=f"{ref.record_id}_w{i:06d}",
                                  window=dataclasses.asdict(w))
