"""EDF and BDF files (European Data Format, 16-bit; its 24-bit BioSemi variant), as Holters and
wearables export them, through pyedflib (a maintained wrapper of the EDFlib C library: a 2.9 MB
wheel needing only numpy, against MNE's 7.4 MB of pure Python plus its dependencies, for the one
thing used here: reading signals, in part).

A channel's digital values pass through unchanged, with the gain and baseline the EDF header's
physical and digital ranges give (physical = (digital - baseline) / gain); a window reads only
its samples. EDF has no "missing sample" value, so the digital minimum is a rail, not a sentinel.
Channels at several sampling rates (a polysomnogram's EEG beside its ECG) are refused: the
platform stores one rate per record. Sex comes from EDF+'s patient field; age from the birth
date and the start date where both are given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clef_platform.ingest.read import ChannelInfo, HeaderInfo, iso_datetime
from clef_platform.ingest.readers import comments_as_text, files_sha256, register
from clef_platform.ingest.validate import Reject


def _open(file: Path):
    import pyedflib

    if not file.is_file():
        raise Reject("missing_signal_file", f"{file} does not exist")
    try:
        return pyedflib.EdfReader(str(file))
    except OSError as e:
        raise Reject("garbled_header", f"{file}: not a readable EDF/BDF file: {e}") from None


class EdfReader:
    def __init__(self, name: str, suffix: str, bits: int):
        self.name, self.suffix, self.bits = name, suffix, bits

    def header(self, path: str) -> HeaderInfo:
        file = Path(path + self.suffix)
        f = _open(file)
        try:
            n = f.signals_in_file
            if n == 0:
                raise Reject("absurd_header_value", f"{file}: no signals")
            rates = [float(f.getSampleFrequency(i)) for i in range(n)]
            if len(set(rates)) != 1:
                labels = ", ".join(f"{f.getLabel(i)} {r:g} Hz" for i, r in enumerate(rates))
                raise Reject("unsupported_format", f"{file}: channels at several sampling "
                                                   f"rates ({labels})")
            lengths = set(int(x) for x in f.getNSamples())
            channels = tuple(self._channel(f, i, file.name) for i in range(n))
            comments = self._comments(f)
            start = f.getStartdatetime()
        finally:
            f.close()
        return HeaderInfo(path=str(file), record_name=file.stem, n_sig=n, fs=rates[0],
                          sig_len=min(lengths), base_datetime=iso_datetime(start) if start else "",
                          channels=channels, comments=comments)

    def _channel(self, f, i: int, file_name: str) -> ChannelInfo:
        pmin, pmax = f.getPhysicalMinimum(i), f.getPhysicalMaximum(i)
        dmin, dmax = f.getDigitalMinimum(i), f.getDigitalMaximum(i)
        gain = (dmax - dmin) / (pmax - pmin) if pmax != pmin and dmax != dmin else None
        baseline = dmin - pmin * gain if gain else 0
        return ChannelInfo(file_name=file_name, fmt=str(self.bits), samps_per_frame=1,
                           byte_offset=0, gain=gain, baseline=baseline,
                           units=f.getPhysicalDimension(i).strip(), adc_res=self.bits,
                           adc_zero=(int(dmin) + int(dmax) + 1) // 2, name=f.getLabel(i).strip(),
                           sentinel=False)

    @staticmethod
    def _comments(f) -> tuple[str, ...]:
        out = []
        sex = str(f.getSex() or "").strip()
        if sex:
            out.append(f"Sex: {sex}")
        birth, start = f.getBirthdate(string=False), f.getStartdatetime()
        if birth and start:
            years = start.year - birth.year - ((start.month, start.day) < (birth.month, birth.day))
            out.append(f"Age: {years}")
        return tuple(out)

    def header_text(self, path: str) -> str:
        return comments_as_text(self, path)

    def read(self, header: HeaderInfo, path: str, start: int = 0, length: int | None = None):
        n = header.sig_len - start if length is None else length
        f = _open(Path(header.path))
        try:
            cols = [f.readSignal(i, start, n, digital=True) for i in range(header.n_sig)]
        finally:
            f.close()
        if any(len(c) != n for c in cols):
            raise Reject("header_length_mismatch", f"{header.path}: {min(map(len, cols))} "
                                                   f"samples read, expected {n}")
        return np.stack(cols, axis=1).astype(np.int64)

    def source_sha256(self, header: HeaderInfo) -> str:
        return files_sha256([Path(header.path)])


register(EdfReader("edf", ".edf", 16))
register(EdfReader("bdf", ".bdf", 24))
