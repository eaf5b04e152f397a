"""CODE-15's HDF5 layout (Ribeiro et al.): files `exams_part<k>.hdf5` holding `tracings`
[N, 4096, 12] (float32, 400 Hz; leads DI, DII, DIII, AVR, AVL, AVF, V1-V6) and `exam_id` [N],
with the exams' metadata in exams.csv (exam_id, age, is_male, patient_id, trace_file, labels),
which a corpus spec joins on the record id.

Many records per file: `members(file)` lists them by exam id and each record is read as its row.
Recordings shorter than 4096 samples (7 s or 10 s) are zero-padded at both ends; the padding (rows
where all twelve leads are exactly 0) is trimmed, never stored as signal. Values are taken as
units of 1e-4 V (0.1 mV), as the CODE releases describe them, and stored at 1 uV per unit; this
was checked only on the project's artificial fixture, not on a real CODE-15 file (none here).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from clef_platform.ingest.read import ChannelInfo, HeaderInfo
from clef_platform.ingest.readers import MEMBER_SEP, register
from clef_platform.ingest.validate import Reject

FS = 400.0
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
UNITS_PER_VALUE = 100.0          # 1e-4 V per value = 100 uV; stored at 1 uV per unit
UNITS_PER_MV = 1000.0


def _split(path: str) -> tuple[Path, int]:
    base, sep, row = path.rpartition(MEMBER_SEP)
    if not sep or not row.isdigit():
        raise Reject("bad_reference", f"{path}: expected <file>{MEMBER_SEP}<row>")
    return Path(base + Code15Reader.suffix), int(row)


def _row(file: Path, row: int) -> np.ndarray:
    """The row's tracing [4096, 12] as stored. Header, samples and digest of a record come from
    one read (the last row's, while its file is unchanged)."""
    if not file.is_file():
        raise Reject("missing_signal_file", f"{file} does not exist")
    st = file.stat()
    return _row_unchanged(str(file), row, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1)
def _row_unchanged(name: str, row: int, mtime_ns: int, size: int) -> np.ndarray:
    import h5py

    file = Path(name)
    try:
        with h5py.File(file, "r") as f:
            tracings = f["tracings"]
            if tracings.ndim != 3 or tracings.shape[2] != len(LEADS):
                raise Reject("garbled_header", f"{file}: tracings is {tracings.shape}, "
                                               "expected [N, samples, 12]")
            if row >= tracings.shape[0]:
                raise Reject("bad_reference", f"{file}: no row {row} ({tracings.shape[0]} rows)")
            x = np.asarray(tracings[row])
            x.setflags(write=False)     # shared by the calls the cache answers
            return x
    except OSError as e:
        raise Reject("garbled_header", f"{file}: not a readable HDF5 file: {e}") from None
    except KeyError as e:
        raise Reject("garbled_header", f"{file}: no dataset {e}") from None


def _unpadded(x: np.ndarray) -> tuple[int, int]:
    """(first, stop) of the samples between the zero padding."""
    live = np.flatnonzero(np.any(x != 0, axis=1))
    return (int(live[0]), int(live[-1]) + 1) if live.size else (0, 0)


class Code15Reader:
    name = "code15-hdf5"
    suffix = ".hdf5"

    def members(self, file: Path) -> list[str]:
        import h5py

        try:
            with h5py.File(file, "r") as f:
                return [str(int(x)) for x in f["exam_id"][()]]
        except (OSError, KeyError):
            return []     # listed as nothing: an unreadable file has no exams to name

    def header(self, path: str) -> HeaderInfo:
        file, row = _split(path)
        first, stop = _unpadded(_row(file, row))
        channels = tuple(ChannelInfo(file_name=file.name, fmt="16", samps_per_frame=1,
                                     byte_offset=0, gain=UNITS_PER_MV, baseline=0, units="mV",
                                     adc_res=0, adc_zero=0, name=lead, sentinel=False)
                         for lead in LEADS)
        return HeaderInfo(path=path, record_name=f"{file.stem}{MEMBER_SEP}{row}",
                          n_sig=len(LEADS), fs=FS, sig_len=stop - first, base_datetime="",
                          channels=channels, comments=(f"unpadded: {first} {stop}",))

    def header_text(self, path: str) -> str:
        return ""         # metadata comes from exams.csv (the spec's table)

    def read(self, header: HeaderInfo, path: str, start: int = 0, length: int | None = None):
        file, row = _split(path)
        x = _row(file, row)
        first, stop = _unpadded(x)
        x = x[first:stop]
        if not np.isfinite(x).all():
            raise Reject("unreadable_signal", f"{path}: samples that are not finite")
        end = len(x) if length is None else start + length
        return np.rint(x[start:end].astype(np.float64) * UNITS_PER_VALUE).astype(np.int64)

    def source_sha256(self, header: HeaderInfo) -> str:
        """Of the row as stored (padding included): one exam, not the whole file."""
        file, row = _split(header.path)
        return hashlib.sha256(np.ascontiguousarray(_row(file, row), "<f4").tobytes()).hexdigest()


register(Code15Reader())
