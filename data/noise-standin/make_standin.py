"""How bw.hea / bw.dat here were made (run once; kept so the file can be checked and rebuilt).

An ARTIFICIAL STAND-IN for a MIT-BIH Noise Stress Test Database record: it is real recorded ECG,
not recorded noise. Leads I and II of LUDB records 1 and 2 (data/ludb, ODC-By 1.0), each pair
joined end to end (20 s), resampled from 500 Hz to NSTDB's 360 Hz and written as a 2-channel
16-bit WFDB record named like NSTDB's baseline-wander record. It exercises the noise-file path
(read, resample, segment, scale) with a real signal; it says nothing about real noise.

    .venv/bin/python data/noise-standin/make_standin.py
"""

from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import resample_poly

HERE = Path(__file__).resolve().parent
LUDB = HERE.parent / "ludb" / "data"

if __name__ == "__main__":
    parts = [wfdb.rdrecord(str(LUDB / r), channel_names=["i", "ii"]).p_signal for r in ("1", "2")]
    x = np.concatenate(parts, 0)                          # [20 s x 500 Hz, 2]
    x = resample_poly(x, 18, 25, axis=0)                  # 500 Hz -> 360 Hz
    wfdb.wrsamp("bw", fs=360, units=["mV", "mV"], sig_name=["ludb1-2_i", "ludb1-2_ii"],
                p_signal=x, fmt=["16", "16"], adc_gain=[1000.0, 1000.0], baseline=[0, 0],
                write_dir=str(HERE),
                comments=["artificial stand-in for an NSTDB record: LUDB ECG, not noise"])
