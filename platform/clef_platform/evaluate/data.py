"""The evaluation view: what the encoder sees of a record, and the label-bearing part of a record.

Datasets are read through `clef_platform.layout` (`open_dataset`, the verified `read_shard`);
this module only turns a record into its deterministic evaluation view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def join_url(root: str, name: str) -> str:
    """`name` as is when it is a URL or an absolute path, else `root/name`."""
    if "://" in name or Path(name).is_absolute():
        return name
    return f"{str(root).rstrip('/')}/{name}"


def crop_window(lead_signal: np.ndarray, window: int) -> np.ndarray:
    """The centre `window` samples of one lead (zero-padded on the right, after removing the
    mean, when the record is shorter)."""
    x = np.asarray(lead_signal, dtype=np.float32)
    if x.shape[0] > window:
        start = (x.shape[0] - window) // 2
        return np.ascontiguousarray(x[start:start + window])
    return np.pad(x - x.mean(), (0, window - x.shape[0])).astype(np.float32)


def eval_views(windows: np.ndarray) -> np.ndarray:
    """The deterministic evaluation view of cropped windows [N, window]: the pretraining views'
    0.67-40 Hz zero-phase band-pass (`clef_model.views.bandpass`, same code path as make_views)
    and per-view z-score (eps 1e-6), with no augmentation (no noise, no masking, fixed crop)."""
    import torch

    from clef_model.views import ViewConfig, bandpass

    cfg = ViewConfig()
    if len(windows) == 0:
        return np.zeros((0, windows.shape[-1] if windows.ndim == 2 else 0), np.float32)
    x = bandpass(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)), cfg)
    x = x - x.mean(-1, keepdim=True)
    std = torch.linalg.vector_norm(x, dim=-1, keepdim=True) / (x.shape[-1] ** 0.5)
    return (x / (std + cfg.eps)).numpy().astype(np.float32)


def eval_window(lead_signal: np.ndarray, window: int) -> np.ndarray:
    """One record's evaluation view (crop_window then eval_views)."""
    return eval_views(crop_window(lead_signal, window)[None])[0]


def meta_json(record: dict[str, Any]) -> str:
    """The label-bearing part of a record as JSON (what tasks compute labels from)."""
    meta = dict(record.get("meta") or {})
    for k in ("gain", "baseline", "leads"):
        meta.pop(k, None)
    keep = {k: record.get(k) for k in ("key", "record_id", "patient_id", "corpus", "split",
                                        "ecg_time")}
    return json.dumps({**keep, "meta": meta}, sort_keys=True, default=str)
