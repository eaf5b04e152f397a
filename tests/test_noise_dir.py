"""`--data.noise_dir` (layout.noise): a folder of NSTDB-named noise records read into arrays for
clef_model's views. Uses data/noise-standin/bw, a real signal (LUDB ECG resampled to 360 Hz,
2 channels) that is an ARTIFICIAL stand-in for the noise database (its README says so)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb
from scipy.signal import resample_poly

from clef_model import noise
from clef_model.views import NOISE_KINDS, ViewConfig, record_seeds, view_noise
from clef_platform.layout.noise import NoiseFileError, read_noise_dir

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "data" / "noise-standin"


def test_views_contain_the_recorded_noise_deterministically():
    rec = read_noise_dir(STANDIN)
    (kind, x, fs), = rec.arrays
    assert kind == "baseline" and fs == 360.0 and x.shape == (2, 7200)
    raw = wfdb.rdrecord(str(STANDIN / "bw")).p_signal.T
    assert np.allclose(x, raw)
    # The bank: the record resampled 360 -> 500 Hz, zero-mean and unit RMS per channel.
    bank = noise.load_noise_bank(rec, fs=500.0)
    want = resample_poly(raw, 25, 18, axis=1)
    want = want - want.mean(1, keepdims=True)
    want /= np.sqrt((want ** 2).mean(1, keepdims=True))
    got = bank.recordings[noise.KINDS.index("baseline")].numpy()
    assert got.shape == (2, 10000) and np.allclose(got, want, atol=1e-5)

    cfg = ViewConfig(noise_recordings=rec, noise_probs=(0, 0, 0, 1.0, 0))
    seeds = record_seeds(0, [f"r{i}" for i in range(24)], 0)
    nz, kinds = view_noise(seeds, 0, cfg)
    assert torch.all(kinds == NOISE_KINDS.index("baseline"))
    # Each view's noise is a segment of one channel of that recording, scaled to 0.1 mV RMS.
    windows = np.lib.stride_tricks.sliding_window_view(got, 5000, axis=1)   # [2, 5001, 5000]
    flat = windows.reshape(-1, 5000)
    for row in nz.numpy():
        seg = row / np.sqrt((row ** 2).mean())
        err = np.abs(flat / np.sqrt((flat ** 2).mean(1, keepdims=True)) - seg).max(1)
        assert err.min() < 1e-4
    assert np.allclose(np.sqrt((nz.numpy() ** 2).mean(1)), 0.1, rtol=1e-4)
    # Deterministic per seed: the same seeds give the same noise, another run seed other noise.
    assert torch.equal(view_noise(seeds, 0, cfg)[0], nz)
    other = view_noise(record_seeds(1, [f"r{i}" for i in range(24)], 0), 0, cfg)[0]
    assert not torch.allclose(other, nz)
    # Without the folder the same seeds draw the synthetic model instead.
    synth = view_noise(seeds, 0, ViewConfig(noise_probs=(0, 0, 0, 1.0, 0)))[0]
    assert not torch.allclose(synth, nz)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


def test_missing_or_garbled_noise_files_are_one_line_errors(tmp_path):
    with pytest.raises(NoiseFileError) as e:
        read_noise_dir(tmp_path / "absent")
    assert "absent: noise folder not found" in _one_line(e)
    with pytest.raises(NoiseFileError) as e:
        read_noise_dir(tmp_path)
    assert "none of ma, em, bw" in _one_line(e)

    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "em.hea").write_text("em 2 three hundred sixty\nnonsense\n")
    with pytest.raises(NoiseFileError) as e:
        read_noise_dir(garbled)
    assert str(garbled / "em.hea") in _one_line(e) and "not a readable WFDB record" in str(e.value)

    lost = tmp_path / "lost"
    lost.mkdir()
    shutil.copy(STANDIN / "bw.hea", lost / "bw.hea")       # header without its signal file
    with pytest.raises(NoiseFileError) as e:
        read_noise_dir(lost)
    assert str(lost / "bw.hea") in _one_line(e)

    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "ma.npz", signal=np.zeros((2, 100)))
    with pytest.raises(NoiseFileError) as e:
        read_noise_dir(npz)
    assert str(npz / "ma.npz") in _one_line(e) and "'fs'" in str(e.value)
    np.savez(npz / "ma.npz", signal=np.zeros(100), fs=360.0)
    with pytest.raises(NoiseFileError) as e:
        read_noise_dir(npz)
    assert "[channels, samples]" in _one_line(e)
    (npz / "ma.npz").write_bytes(b"not a zip")
    with pytest.raises(NoiseFileError) as e:
        read_noise_dir(npz)
    assert "not a readable .npz" in _one_line(e)

    # A good .npz works, at its own rate.
    good = tmp_path / "good"
    good.mkdir()
    sig = np.random.default_rng(0).normal(size=(2, 3600))
    np.savez(good / "ma.npz", signal=sig, fs=360.0)
    (kind, x, fs), = read_noise_dir(good).arrays
    assert kind == "motion" and fs == 360.0 and np.allclose(x, sig.astype(np.float32))


def test_pretrain_config_refuses_a_bad_noise_dir_in_one_line(tmp_path, capsys):
    from clef_platform.cli import UsageError
    from clef_platform.train.config import PretrainConfig

    with pytest.raises(UsageError) as e:       # jobs exit 2 with this one line (clef_platform.cli)
        PretrainConfig.from_args(["--scale", "small", "--method", "simclr", "--data",
                                  str(tmp_path), "--data.noise_dir", str(tmp_path / "x")])
    (line,) = str(e.value).splitlines()
    assert "--data.noise_dir:" in line and f"{tmp_path / 'x'}: noise folder not found" in line
