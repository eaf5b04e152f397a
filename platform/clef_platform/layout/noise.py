"""A real-noise folder (`--data.noise_dir`): the recordings CLEF views mix into the ECG.

The folder holds up to three records named as in the MIT-BIH Noise Stress Test Database, one per
noise kind: `ma` (muscle / motion artefact), `em` (electrode motion), `bw` (baseline wander).
Each record is either

- a WFDB record `<name>.hea` + its signal file (NSTDB's own form: 2 channels at 360 Hz; the
  header gives the sampling rate and the physical units), or
- `<name>.npz` with two arrays: `signal`, float [channels, samples], and `fs`, a scalar
  sampling rate in Hz (read with allow_pickle=False).

Any sampling rate works: `clef_model.noise` resamples each record to the view rate. A kind with
no record keeps its synthetic model (logged). The folder is read once here into
`clef_model.noise.NoiseRecordings` (arrays; clef_model reads no files). Anything unreadable is
a `NoiseFileError` naming the file, one line.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from clef_model.noise import KINDS, NSTDB_RECORDS, NoiseRecordings, noise_recordings

log = logging.getLogger(__name__)


class NoiseFileError(ValueError):
    """A noise folder or record that cannot be used (names it)."""


def _read_wfdb(path: Path) -> tuple[np.ndarray, float]:
    import wfdb

    try:
        rec = wfdb.rdrecord(str(path.with_suffix("")))
    except Exception as e:  # noqa: BLE001 - wfdb raises many types for a garbled record
        raise NoiseFileError(f"{path}: not a readable WFDB record "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                             ) from None
    if rec.p_signal is None or rec.fs is None:
        raise NoiseFileError(f"{path}: WFDB record without a physical signal or sampling rate")
    return np.asarray(rec.p_signal, dtype=np.float64).T, float(rec.fs)


def _read_npz(path: Path) -> tuple[np.ndarray, float]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"signal", "fs"} - set(z.files)
            if missing:
                raise NoiseFileError(f"{path}: missing array(s) {sorted(missing)}; expected "
                                     f"'signal' [channels, samples] and 'fs'")
            x, fs = np.asarray(z["signal"], dtype=np.float64), z["fs"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, NoiseFileError):
            raise
        raise NoiseFileError(f"{path}: not a readable .npz noise record "
                             f"({type(e).__name__})") from None
    if np.ndim(fs) != 0:
        raise NoiseFileError(f"{path}: 'fs' must be a scalar, got shape {np.shape(fs)}")
    return x, float(fs)


def _check(path: Path, x: np.ndarray, fs: float) -> np.ndarray:
    if x.ndim != 2 or x.shape[1] < x.shape[0]:
        raise NoiseFileError(f"{path}: signal must be [channels, samples] with more samples "
                             f"than channels, got shape {x.shape}")
    if not np.isfinite(fs) or fs <= 0:
        raise NoiseFileError(f"{path}: sampling rate must be > 0 Hz, got {fs}")
    finite = np.isfinite(x).all(1)
    if not finite.any():
        raise NoiseFileError(f"{path}: no channel is finite throughout")
    if not finite.all():
        log.warning("%s: %d channel(s) with non-finite samples left out", path,
                    int((~finite).sum()))
    return x[finite]


def read_noise_dir(folder: str | Path) -> NoiseRecordings:
    """The folder's ma / em / bw records as NoiseRecordings (at their own sampling rates)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoiseFileError(f"{folder}: noise folder not found (--data.noise_dir)")
    arrays = {}
    for kind, name in zip(KINDS, NSTDB_RECORDS):
        hea, npz = folder / f"{name}.hea", folder / f"{name}.npz"
        if hea.exists() and npz.exists():
            raise NoiseFileError(f"{folder}: both {hea.name} and {npz.name}; keep one")
        if hea.exists():
            path, (x, fs) = hea, _read_wfdb(hea)
        elif npz.exists():
            path, (x, fs) = npz, _read_npz(npz)
        else:
            log.info("%s: no %s record: %s noise uses its synthetic model", folder, name, kind)
            continue
        arrays[kind] = (_check(path, x, fs), fs)
        log.info("%s: %s noise from %s (%d channels, %.1f s at %g Hz)", folder, kind, path.name,
                 arrays[kind][0].shape[0], arrays[kind][0].shape[1] / fs, fs)
    if not arrays:
        raise NoiseFileError(f"{folder}: none of {', '.join(NSTDB_RECORDS)} (.hea or .npz) "
                             f"found")
    return noise_recordings(arrays, source=str(folder))
