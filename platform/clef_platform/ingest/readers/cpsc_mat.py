"""The original CPSC 2018 MATLAB files (`A0001.mat`): a struct `ECG` with `sex` ('Male' /
'Female'), `age` and `data`, 12 leads x N samples in millivolts at 500 Hz (6-60 s), leads in
the standard order I, II, III, aVR, aVL, aVF, V1-V6 (the challenge's description).

The samples are floating-point millivolts; they are stored at 1 uV per unit (gain 1000), so a
stored value is within 0.5 uV of the file's, far below any ECG amplifier's noise. A MATLAB v5
file cannot be read in part: a record (at most a minute here) is loaded whole, then windowed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from clef_platform.ingest.read import ChannelInfo, HeaderInfo
from clef_platform.ingest.readers import comments_as_text, files_sha256, register
from clef_platform.ingest.validate import Reject

FS = 500.0
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
UNITS_PER_MV = 1000.0


def _load(file: Path) -> tuple[str, object, np.ndarray]:
    """(sex, age, data [12, N] float64) of one file; Reject naming what is wrong. The header
    and the samples of a record come from one load (the last file's, while it is unchanged)."""
    if not file.is_file():
        raise Reject("missing_signal_file", f"{file} does not exist")
    st = file.stat()
    return _load_unchanged(str(file), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1)
def _load_unchanged(name: str, mtime_ns: int, size: int) -> tuple[str, object, np.ndarray]:
    from scipy.io import loadmat

    file = Path(name)
    try:
        ecg = loadmat(str(file))["ECG"]
        sex, age, data = (ecg[k][0, 0] for k in ("sex", "age", "data"))
    except (ValueError, KeyError, IndexError, TypeError, OSError) as e:
        raise Reject("garbled_header", f"{file}: not a CPSC 2018 ECG struct "
                                       f"({type(e).__name__}: {e})") from None
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] != len(LEADS) or not np.issubdtype(data.dtype, np.number):
        raise Reject("garbled_header", f"{file}: ECG.data is {data.dtype} {data.shape}, "
                                       f"expected 12 x N numbers")
    data.setflags(write=False)          # shared by the calls the cache answers
    return (str(np.ravel(sex)[0]) if np.size(sex) else "",
            np.ravel(age)[0] if np.size(age) else None, data)


class CpscMatReader:
    name = "cpsc-mat"
    suffix = ".mat"

    def header(self, path: str) -> HeaderInfo:
        file = Path(path + self.suffix)
        sex, age, data = _load(file)
        channels = tuple(ChannelInfo(file_name=file.name, fmt="16", samps_per_frame=1,
                                     byte_offset=0, gain=UNITS_PER_MV, baseline=0, units="mV",
                                     adc_res=0, adc_zero=0, name=lead) for lead in LEADS)
        comments = (f"Age: {age}" if age is not None else "", f"Sex: {sex}" if sex else "")
        return HeaderInfo(path=str(file), record_name=file.stem, n_sig=len(LEADS), fs=FS,
                          sig_len=int(data.shape[1]), base_datetime="", channels=channels,
                          comments=tuple(c for c in comments if c))

    def header_text(self, path: str) -> str:
        return comments_as_text(self, path)

    def read(self, header: HeaderInfo, path: str, start: int = 0, length: int | None = None):
        _, _, data = _load(Path(header.path))
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise Reject("unreadable_signal", f"{header.path}: {bad} samples are not finite")
        stop = data.shape[1] if length is None else start + length
        return np.rint(data[:, start:stop].T * UNITS_PER_MV).astype(np.int64)

    def source_sha256(self, header: HeaderInfo) -> str:
        return files_sha256([Path(header.path)])


register(CpscMatReader())
