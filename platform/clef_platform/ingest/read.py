"""Reading one WFDB record: a strict header parse, signal-file checks, then wfdb for the samples.

Why our own header parser: wfdb-python is lenient where ingestion must not be (a record line
`17 12 abc 5000` reads as 250 Hz, an ADC gain of 0 silently becomes 200). We parse the header
strictly to decide whether to trust the record, and let wfdb decode the samples (digital,
lossless) once the header and files have passed.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clef_platform.ingest.validate import Reject

log = logging.getLogger(__name__)

# WFDB storage formats we read: bytes per sample (for the file-size check) and bit depth
# (the ADC limits when the header gives no resolution). Format 8 is first-difference coded.
BYTES_PER_SAMPLE: dict[str, float] = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3, "508": 0, "516": 0, "524": 0,
}
FORMAT_BITS: dict[str, int] = {
    "8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16,
    "212": 12, "310": 10, "311": 10, "508": 8, "516": 16, "524": 24,
}
COMPRESSED_FORMATS = frozenset({"508", "516", "524"})   # FLAC: size is not predictable
HEADER_MAX_BYTES = 1 << 20                              # a WFDB header is a few KB

_FMT_RE = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN_RE = re.compile(r"^([-+0-9.eE]+)(?:\(([-+0-9]+)\))?(?:/(\S+))?$")
_FS_RE = re.compile(r"^([-+0-9.eE]+)(?:/[-+0-9.eE]+)?(?:\([-+0-9.eE]+\))?$")
_VOLT_UNITS = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3, "nv": 1e-6}


@dataclass(frozen=True)
class ChannelInfo:
    file_name: str
    fmt: str
    samps_per_frame: int
    byte_offset: int
    gain: float | None           # ADC units per physical unit; None when the header omits it
    baseline: int
    units: str
    adc_res: int
    adc_zero: int
    name: str
    skew: int = 0
    sentinel: bool = True         # the format's most negative value means "no sample" (WFDB)

    @property
    def mv_per_unit(self) -> float | None:
        """Millivolts per physical unit, None for a non-voltage unit (mmHg, NU...)."""
        return _VOLT_UNITS.get(self.units.lower())

    def digital_limits(self) -> tuple[int, int]:
        """Lowest and highest digital value the ADC can produce (saturation rails).

        From the header's ADC resolution and zero when given, else the format's bit depth;
        the format's invalid-sample sentinel is excluded from the low rail.
        """
        bits = FORMAT_BITS.get(self.fmt, 16)
        res = self.adc_res if 0 < self.adc_res <= bits else bits
        zero = self.adc_zero if 0 < self.adc_res <= bits else 0
        lo, hi = zero - 2 ** (res - 1), zero + 2 ** (res - 1) - 1
        inv = self.invalid_value()
        return (lo + 1 if inv is not None and lo <= inv else lo), hi

    def invalid_value(self) -> int | None:
        if self.fmt == "8" or not self.sentinel:
            return None
        return -(2 ** (FORMAT_BITS.get(self.fmt, 16) - 1))


@dataclass(frozen=True)
class HeaderInfo:
    path: str                    # the .hea file
    record_name: str
    n_sig: int
    fs: float | None
    sig_len: int | None
    base_datetime: str           # ISO-8601, "" when the header has no base date and time
    channels: tuple[ChannelInfo, ...]
    comments: tuple[str, ...] = field(default=())


@dataclass
class RawRecord:
    header: HeaderInfo
    digital: np.ndarray          # integer [T, n_sig] (read_signals: int16 or int64)


def read_header_text(source_path: str) -> tuple[Path, str]:
    hea = Path(source_path + ".hea")
    if not hea.is_file():
        raise Reject("missing_header_file", f"{hea} does not exist")
    raw = hea.read_bytes()[:HEADER_MAX_BYTES]
    try:
        return hea, raw.decode("utf-8")
    except UnicodeDecodeError:
        # Headers are ASCII by spec; anything else in the record/signal lines is garbage, but
        # latin-1 comments (names, diagnoses) are common, so decode leniently and let the
        # strict line parser decide.
        return hea, raw.decode("latin-1")


def parse_header(text: str, where: str) -> HeaderInfo:
    """Strict parse of a single-segment WFDB header; raises Reject on anything doubtful."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n")]
    comments = tuple(ln[1:].strip() for ln in lines if ln.startswith("#"))
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise Reject("garbled_header", f"{where}: no record line")
    if not all(ln.isprintable() for ln in body):
        raise Reject("garbled_header", f"{where}: non-printable bytes in the record/signal lines")
    rec = body[0].split()
    name = rec[0]
    if "/" in name:
        raise Reject("unsupported_format", f"{where}: multi-segment record {name!r}")
    if len(rec) < 2 or not rec[1].isdigit():
        raise Reject("garbled_header", f"{where}: record line {body[0]!r}: signal count "
                                       "missing or not an integer")
    n_sig = int(rec[1])
    fs = None
    if len(rec) > 2:
        m = _FS_RE.match(rec[2])
        if not m:
            raise Reject("garbled_header", f"{where}: record line: sampling frequency "
                                           f"{rec[2]!r} is not a number")
        fs = float(m.group(1))
    sig_len = None
    if len(rec) > 3:
        if not rec[3].isdigit():
            raise Reject("garbled_header", f"{where}: record line: signal length {rec[3]!r} "
                                           "is not an integer")
        sig_len = int(rec[3])
    base = _base_datetime(rec[4:], where)
    sig_lines = body[1:]
    if len(sig_lines) != n_sig:
        raise Reject("garbled_header", f"{where}: record line declares {n_sig} signals, "
                                       f"{len(sig_lines)} signal lines follow")
    channels = tuple(_parse_signal_line(ln, i, where) for i, ln in enumerate(sig_lines))
    return HeaderInfo(path=where, record_name=name, n_sig=n_sig, fs=fs, sig_len=sig_len,
                      base_datetime=base, channels=channels, comments=comments)


def _base_datetime(tokens: list[str], where: str) -> str:
    """ISO-8601 from the header's base time and date; "" without a date (a time alone cannot
    place a record on a patient's timeline)."""
    if len(tokens) < 2:
        return ""
    value = parse_base_datetime(tokens[0], tokens[1])
    if value is None:
        raise Reject("garbled_header", f"{where}: base time/date {' '.join(tokens[:2])!r} "
                                       "is not [[HH:]MM:]SS[.sss] DD/MM/YYYY")
    return iso_datetime(value)


def parse_base_datetime(time_tok: str, date_tok: str) -> dt.datetime | None:
    """WFDB base time `[[H]H:][M]M:SS[.sss]` (leading fields optional, hours may be one digit)
    and date `DD/MM/YYYY`; None when either is malformed."""
    parts = time_tok.split(":")
    try:
        if not 1 <= len(parts) <= 3:
            return None
        nums = [int(p) for p in parts[:-1]]
        sec = float(parts[-1])
        h, m = ([0] * (2 - len(nums)) + nums)
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= sec < 60):
            return None
        d = dt.datetime.strptime(date_tok, "%d/%m/%Y")
    except ValueError:
        return None
    micro = round((sec - int(sec)) * 1e6)
    return d.replace(hour=h, minute=m, second=int(sec), microsecond=min(micro, 999_999))


def iso_datetime(value: dt.datetime) -> str:
    return value.isoformat(timespec="seconds" if value.microsecond == 0 else "milliseconds")


def _parse_signal_line(line: str, i: int, where: str) -> ChannelInfo:
    tok = line.split()
    bad = f"{where}: signal line {i + 1} {line!r}"
    if len(tok) < 2:
        raise Reject("garbled_header", f"{bad}: needs at least a file name and a format")
    m = _FMT_RE.match(tok[1])
    if not m:
        raise Reject("garbled_header", f"{bad}: format {tok[1]!r} is not WFDB's "
                                       "fmt[xspf][:skew][+offset]")
    fmt = m.group(1)
    if fmt not in BYTES_PER_SAMPLE:
        raise Reject("unsupported_format", f"{bad}: storage format {fmt}")
    gain, baseline, units = None, None, "mV"
    if len(tok) > 2:
        g = _GAIN_RE.match(tok[2])
        if not g:
            raise Reject("garbled_header", f"{bad}: ADC gain {tok[2]!r} is not gain[(base)][/units]")
        try:
            gain = float(g.group(1))
        except ValueError:
            raise Reject("garbled_header", f"{bad}: ADC gain {g.group(1)!r} is not a number") from None
        baseline = int(g.group(2)) if g.group(2) is not None else None
        units = g.group(3) or "mV"
    ints = []
    for j, name in ((3, "ADC resolution"), (4, "ADC zero")):
        if len(tok) > j:
            try:
                ints.append(int(tok[j]))
            except ValueError:
                raise Reject("garbled_header", f"{bad}: {name} {tok[j]!r} is not an integer") from None
        else:
            ints.append(0)
    adc_res, adc_zero = ints
    description = " ".join(tok[8:]) if len(tok) > 8 else ""
    return ChannelInfo(file_name=tok[0], fmt=fmt, samps_per_frame=int(m.group(2) or 1),
                       byte_offset=int(m.group(4) or 0), gain=gain,
                       baseline=adc_zero if baseline is None else baseline, units=units,
                       adc_res=adc_res, adc_zero=adc_zero, name=description,
                       skew=int(m.group(3) or 0))


def check_signal_files(header: HeaderInfo, directory: Path) -> None:
    """Every signal file exists and its size matches the header (when the format allows)."""
    by_file: dict[str, list[ChannelInfo]] = {}
    for ch in header.channels:
        by_file.setdefault(ch.file_name, []).append(ch)
    for file_name, chans in by_file.items():
        if "/" in file_name or "\\" in file_name or file_name in ("", ".", ".."):
            raise Reject("garbled_header", f"{header.path}: signal file name {file_name!r} "
                                           "is not a plain file name")
        path = directory / file_name
        if not path.is_file():
            raise Reject("missing_signal_file", f"{path} (named in {header.path}) does not exist")
        fmts = {c.fmt for c in chans}
        if header.sig_len is None or fmts & COMPRESSED_FORMATS or len(fmts) > 1:
            continue   # size not predictable; wfdb's read and the length check still apply
        bps = BYTES_PER_SAMPLE[chans[0].fmt]
        frame = sum(c.samps_per_frame for c in chans) * bps
        offset = chans[0].byte_offset
        expected = offset + math.ceil(header.sig_len * frame)
        actual = path.stat().st_size
        if actual == expected:
            continue
        data = actual - offset
        # A .mat file may carry trailing MATLAB padding; only shortfalls matter there.
        if actual > expected and path.suffix.lower() == ".mat":
            continue
        frames = data / frame if frame else 0
        if actual < expected and data >= 0 and not float(frames).is_integer():
            raise Reject("truncated_signal_file",
                         f"{path}: {actual} bytes, the header declares {header.sig_len} samples "
                         f"x {len(chans)} channels = {expected} bytes; the file ends mid-frame")
        raise Reject("header_length_mismatch",
                     f"{path}: holds {max(frames, 0):g} samples per channel, {header.path} "
                     f"declares {header.sig_len}")


def load_header(source_path: str) -> HeaderInfo:
    """The strictly parsed header of a record (`source_path` without extension)."""
    hea, text = read_header_text(source_path)
    return parse_header(text, str(hea))


def read_signals(header: HeaderInfo, source_path: str, start: int = 0,
                 length: int | None = None) -> np.ndarray:
    """Digital samples [T, n_sig] after the signal files passed their checks: the whole record,
    or `length` samples from `start` (a window: only those samples are read). int16 for plain
    16-bit files, int64 otherwise (wfdb's digital read)."""
    check_signal_files(header, Path(header.path).parent)
    fast = _read_plain_16bit(header, start, length)
    if fast is not None:
        return fast
    import wfdb   # imported here: listing and the driver never need it

    window = {} if length is None else {"sampfrom": start, "sampto": start + length}
    try:
        rec = wfdb.rdrecord(source_path, physical=False, return_res=64, **window)
    except Exception as exc:   # wfdb raises many types for bad files; all mean "can't decode"
        raise Reject("unreadable_signal", f"{source_path}: wfdb could not read the signal: "
                                          f"{type(exc).__name__}: {exc}") from None
    digital = rec.d_signal
    if digital is None or digital.ndim != 2 or digital.shape[1] != header.n_sig:
        raise Reject("unreadable_signal", f"{source_path}: wfdb returned no {header.n_sig}-channel "
                                          "signal")
    expected = header.sig_len if length is None else length
    if expected is not None and digital.shape[0] != expected:
        raise Reject("header_length_mismatch", f"{source_path}: {digital.shape[0]} samples read, "
                                               f"{header.path} declares {expected}")
    return np.asarray(digital, dtype=np.int64)


def _read_plain_16bit(header: HeaderInfo, start: int = 0,
                      length: int | None = None) -> np.ndarray | None:
    """The common case (LUDB, MIMIC-IV-ECG, CinC .mat, PTB-XL: one file, format 16, one sample
    per frame, no skew) read straight with numpy: the same values wfdb gives, without its
    per-record header re-parse, which costs more than the samples. None: use wfdb."""
    chans = header.channels
    if (header.sig_len is None or len({c.file_name for c in chans}) != 1
            or any(c.fmt != "16" or c.samps_per_frame != 1 or c.skew for c in chans)
            or len({c.byte_offset for c in chans}) != 1):
        return None
    path = Path(header.path).parent / chans[0].file_name
    n = header.sig_len - start if length is None else length
    count = n * header.n_sig
    x = np.fromfile(path, dtype="<i2", count=count,
                    offset=chans[0].byte_offset + 2 * start * header.n_sig)
    if x.size != count:
        raise Reject("header_length_mismatch", f"{path}: {x.size // header.n_sig} samples per "
                                               f"channel, {header.path} declares {header.sig_len}")
    # int16 as stored, [T, n_sig] in column-major order: each channel contiguous, as
    # canonicalisation takes them (one transposing copy; no widening)
    return np.ascontiguousarray(x.reshape(n, header.n_sig).T).T


def read_record(source_path: str) -> RawRecord:
    """Header + signal files checked, then the digital samples decoded with wfdb."""
    header = load_header(source_path)
    return RawRecord(header=header, digital=read_signals(header, source_path))
