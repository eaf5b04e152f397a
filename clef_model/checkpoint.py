"""Encoder checkpoint I/O: released CLEF Lightning files in, the platform's own export in/out.

- `load_released_checkpoint(path, scale)`: a released CLEF `.ckpt` (Lightning; encoder keys under
  `backbone.`) into a fresh `Net1D`. Strict about every tensor the forward pass uses; the unused
  BatchNorm tensors are skipped and reported; non-backbone keys (projection heads) are ignored
  and reported.
- `save_encoder(module, directory)` / `load_encoder(directory)`: the export every later job hands
  around: `encoder.safetensors` + `config.json` (scale and full EncoderConfig).

No pickle is executed anywhere: `.ckpt` files are read with `torch.load(weights_only=True)` and
exports are safetensors + JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clef_model.net1d import SCALES, EncoderConfig, Net1D, build_encoder

log = logging.getLogger(__name__)

PREFIX = "backbone."
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
EXPORT_FORMAT = "clef-encoder/1"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the encoder (missing, unexpected or wrong-shaped tensors)."""


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # encoder keys copied into the module
    skipped_unused: list[str] = field(default_factory=list)  # BatchNorm keys forward never uses
    ignored_non_backbone: list[str] = field(default_factory=list)  # e.g. projector.*


def _names(keys: list[str], limit: int = 10) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_backbone_state(model: Net1D, state_dict: dict[str, torch.Tensor],
                        prefix: str = PREFIX) -> LoadReport:
    """Copy the `prefix`-ed tensors of a state dict into `model`, strictly; see module doc."""
    report = LoadReport()
    backbone: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            backbone[key[len(prefix):]] = value
        else:
            report.ignored_non_backbone.append(key)
    if not backbone:
        raise CheckpointMismatchError(
            f"no '{prefix}*' keys in the state dict; is this a CLEF Lightning checkpoint?")

    own = model.state_dict()
    unused = set(model.unused_state_keys())
    needed = [k for k in own if k not in unused]

    missing = [prefix + k for k in needed if k not in backbone]
    if missing:
        raise CheckpointMismatchError(
            f"checkpoint lacks {len(missing)} tensor(s) the forward pass uses "
            f"(wrong scale?): {_names(missing)}")
    unexpected = [prefix + k for k in backbone if k not in own]
    if unexpected:
        # Extra encoder tensors mean a different architecture (most often the wrong scale).
        raise CheckpointMismatchError(
            f"checkpoint has {len(unexpected)} encoder tensor(s) that a {model.scale or 'this'} "
            f"encoder does not: {_names(unexpected)}")
    for k in needed:
        got, want = tuple(backbone[k].shape), tuple(own[k].shape)
        if got != want:
            raise CheckpointMismatchError(
                f"{prefix}{k} has shape {list(got)}, the encoder expects {list(want)}")

    with torch.no_grad():
        for k in needed:
            own[k].copy_(backbone[k])  # state_dict() tensors share storage with the module
    report.loaded = needed
    report.skipped_unused = [prefix + k for k in backbone if k in unused]
    return report


def load_released_checkpoint(path: str | os.PathLike, scale: str) -> Net1D:
    """A released CLEF Lightning checkpoint as an encoder of `scale`, in eval mode, on CPU."""
    path = Path(path)
    try:
        # mmap keeps optimiser states of large checkpoints out of RAM; only zip files support it.
        ckpt = torch.load(path, map_location="cpu", weights_only=True,
                          mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # weights_only refuses arbitrary pickled objects
        raise ValueError(
            f"cannot read {path} as a weights-only torch checkpoint ({type(exc).__name__}: "
            f"{exc}); files needing arbitrary unpickling are refused on purpose") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint: no 'state_dict' dict")

    model = build_encoder(scale)
    report = load_backbone_state(model, ckpt["state_dict"])
    log.info("loaded %d encoder tensors from %s (scale %s)", len(report.loaded), path, scale)
    if report.skipped_unused:
        log.info("skipped %d unused BatchNorm tensors (use_bn=False): %s",
                 len(report.skipped_unused), ", ".join(report.skipped_unused))
    if report.ignored_non_backbone:
        log.info("ignored %d non-encoder tensors: %s",
                 len(report.ignored_non_backbone), ", ".join(report.ignored_non_backbone))
    return model.eval()


def _unwrap(module: torch.nn.Module) -> Net1D:
    # DDP / DeepSpeed wrap as `.module`, torch.compile as `._orig_mod`.
    while not isinstance(module, Net1D):
        inner = getattr(module, "module", None)
        if inner is None:
            inner = getattr(module, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"save_encoder expects a Net1D (possibly wrapped), got {type(module)}")
        module = inner
    return module


def save_encoder(module: torch.nn.Module, directory: str | os.PathLike,
                 overwrite: bool = False) -> Path:
    """Export an encoder as `directory/{encoder.safetensors, config.json}`, atomically.

    Both files are written into a temporary sibling directory which is then renamed into place,
    so a reader sees either no export or a complete one.
    """
    model = _unwrap(module)
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} exists and is not empty (pass overwrite=True)")
    directory.parent.mkdir(parents=True, exist_ok=True)

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # The runtime checkpointing switch may have been flipped after construction.
    cfg = replace(model.config, activation_checkpointing=model.activation_checkpointing)
    config = {"format": EXPORT_FORMAT, "scale": model.scale, "config": asdict(cfg)}

    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        with open(tmp / CONFIG_FILE, "w") as f:
            json.dump(config, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / WEIGHTS_FILE, "rb") as f:
            os.fsync(f.fileno())
        if directory.exists():
            # rename() cannot replace a non-empty directory: move the old export aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "export")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %s encoder to %s", model.scale, directory)
    return directory


def load_encoder(directory: str | os.PathLike) -> Net1D:
    """An encoder exported by `save_encoder`, in eval mode, on CPU."""
    directory = Path(directory)
    with open(directory / CONFIG_FILE) as f:
        meta = json.load(f)
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE}: unknown export format {meta.get('format')!r}")
    config = EncoderConfig(**meta["config"])
    scale = meta.get("scale")
    if scale is not None:
        ref = SCALES.get(scale)
        # Same architecture as the named scale (in_channels / checkpointing may differ).
        arch = ("base_filters", "ratio", "filter_list", "m_blocks_list", "groups_width")
        if ref is None or any(getattr(ref, a) != getattr(config, a) for a in arch):
            raise ValueError(f"{directory / CONFIG_FILE}: config does not match scale {scale!r}")
    model = Net1D(config, scale=scale)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device="cpu"), strict=True)
    return model.eval()
