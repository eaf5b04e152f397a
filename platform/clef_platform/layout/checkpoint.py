"""Training checkpoints (schema version 1): plain state on disk, a digest list, verified reads.

A checkpoint is one folder (Ray Train merges every rank's files into it):

    clef_run.json                 step, world size, config (rank 0)
    clef_digests_rank<R>.json     SHA-256 and size of every file rank R wrote (one per rank)
    clef_state_rank<R>.pt         the loop's own state of rank R: step, RNG, momentum branch / queue
    step_<N>/...                  DeepSpeed's files (model states, ZeRO partitions), or
    clef_ddp_state.pt             model + optimiser + schedule (the DDP path, rank 0)

Every `.pt` file holds plain state only: tensors, dicts, lists, tuples, str/int/float/bool/None
(what `torch.load(weights_only=True)` reads, so loading runs no constructor of the file's
choosing). Objects DeepSpeed keeps in its dicts (its loss scaler, enums, named tuples, sets) are
converted by `to_plain` into tagged dicts of plain values and rebuilt by `from_plain` through an
explicit codec per type (`register_codec`); an unknown type fails the save, never falls back to
pickle.

`verify(folder)` checks a checkpoint before anything in it is loaded: every rank's digest list
is there (`clef_run.json` names the world size), every listed file exists with its size and
SHA-256, and no file is there that no list names. A checkpoint that fails is not used.
"""

from __future__ import annotations

import collections
import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from clef_platform.digests import sha256_file

SCHEMA_VERSION = 1
RUN_FILE = "clef_run.json"
DIGESTS = "clef_digests_rank{rank}.json"
STATE = "clef_state_rank{rank}.pt"
DDP_STATE = "clef_ddp_state.pt"
_TAG = "__clef_plain__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is: incomplete, damaged, or not plain state."""


# ---- plain state ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Codec:
    cls: type
    encode: Callable[[Any], Any]      # object -> plain value (encoded again recursively)
    decode: Callable[[Any], Any]      # plain value (already decoded) -> object


_CODECS: dict[str, _Codec] = {}


def register_codec(name: str, cls: type, encode: Callable[[Any], Any],
                   decode: Callable[[Any], Any]) -> None:
    """Let `to_plain` store objects of exactly `cls` as {tag: name, value: encode(obj)}."""
    _CODECS[name] = _Codec(cls, encode, decode)


register_codec("set", set, lambda s: sorted(s, key=repr), set)
register_codec("frozenset", frozenset, lambda s: sorted(s, key=repr), frozenset)


def _codec_for(obj) -> tuple[str, _Codec] | None:
    for name, c in _CODECS.items():
        if type(obj) is c.cls:
            return name, c
    return None


def to_plain(obj: Any, where: str = "state") -> Any:
    """`obj` as tensors and builtin containers/scalars only (see the module docstring)."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.Size,
                                       torch.dtype)) and not isinstance(obj, enum.Enum):
        return obj
    found = _codec_for(obj)
    if found is not None:
        name, c = found
        return {_TAG: name, "value": to_plain(c.encode(obj), f"{where}<{name}>")}
    if type(obj) in (dict, collections.OrderedDict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, enum.Enum):
                raise CheckpointError(f"{where}: key {k!r} of type {type(k).__name__} is not "
                                      f"plain (str or int)")
            out[k] = to_plain(v, f"{where}.{k}")
        if _TAG in out:
            raise CheckpointError(f"{where}: key {_TAG!r} is reserved")
        return out
    if type(obj) is list:
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if type(obj) is tuple:
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if type(obj).__module__ == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            return {_TAG: "ndarray", "value": torch.from_numpy(np.ascontiguousarray(obj))}
        if isinstance(obj, np.generic):
            return obj.item()
    raise CheckpointError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} is not plain "
                          f"state and has no codec (clef_platform.layout.checkpoint.register_codec)")


def from_plain(obj: Any, where: str = "state") -> Any:
    if isinstance(obj, dict):
        if _TAG in obj:
            name = obj[_TAG]
            if name == "ndarray":
                return obj["value"].numpy()
            if name not in _CODECS:
                raise CheckpointError(f"{where}: unknown plain-state tag {name!r}")
            return _CODECS[name].decode(from_plain(obj["value"], f"{where}<{name}>"))
        return type(obj)((k, from_plain(v, f"{where}.{k}")) for k, v in obj.items())
    if isinstance(obj, list):
        return [from_plain(v, where) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v, where) for v in obj)
    return obj


def save_plain(state: Any, path: str | os.PathLike) -> None:
    torch.save(to_plain(state, Path(path).name), path)


def load_plain(path: str | os.PathLike, map_location=None) -> Any:
    """Load a file written by `save_plain`; never unpickles anything but plain state."""
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: not plain checkpoint state ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return from_plain(raw, Path(path).name)


# ---- digests and verification -------------------------------------------------------------------

def write_digests(folder: str | os.PathLike, rank: int, files: list[str]) -> Path:
    """The digest list of the files (relative paths) rank `rank` wrote into `folder`."""
    folder = Path(folder)
    entries = {}
    for rel in sorted(files):
        p = folder / rel
        entries[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    out = folder / DIGESTS.format(rank=rank)
    out.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "rank": rank,
                               "files": entries}, indent=1, sort_keys=True))
    return out


def files_under(folder: str | os.PathLike) -> list[str]:
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def write_run_file(folder: str | os.PathLike, **fields: Any) -> None:
    Path(folder, RUN_FILE).write_text(json.dumps({"schema_version": SCHEMA_VERSION, **fields},
                                                 indent=1, sort_keys=True, default=str))


def read_run_file(folder: str | os.PathLike) -> dict:
    p = Path(folder, RUN_FILE)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {RUN_FILE}") from None
    except ValueError as e:
        raise CheckpointError(f"{p}: not JSON ({e})") from None
    if d.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(f"{p}: checkpoint schema version {d.get('schema_version')}, this "
                              f"platform reads {SCHEMA_VERSION}")
    return d


def verify(folder: str | os.PathLike) -> dict:
    """Check a checkpoint folder against its digest lists; returns its run file, or raises
    CheckpointError naming the first problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    run = read_run_file(folder)
    world = run.get("world_size")
    if not isinstance(world, int) or world < 1:
        raise CheckpointError(f"{folder}/{RUN_FILE}: no world_size")
    listed: dict[str, dict] = {}
    for rank in range(world):
        p = folder / DIGESTS.format(rank=rank)
        try:
            d = json.loads(p.read_text())
            entries = d["files"]
        except FileNotFoundError:
            raise CheckpointError(f"{folder}: digest list of rank {rank} is missing") from None
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{p}: not a digest list ({e})") from None
        for rel, e in entries.items():
            if rel in listed and listed[rel] != e:
                raise CheckpointError(f"{folder}: {rel} is listed by two ranks with different "
                                      f"digests")
            listed[rel] = e
    digest_files = {DIGESTS.format(rank=r) for r in range(world)}
    for rel in files_under(folder):
        if rel not in listed and rel not in digest_files and rel != RUN_FILE \
                and not Path(rel).name.startswith("."):
            raise CheckpointError(f"{folder}: file {rel} is in no digest list")
    for rel, e in sorted(listed.items()):
        p = folder / rel
        if not p.is_file():
            raise CheckpointError(f"{folder}: file {rel} is missing")
        if p.stat().st_size != e["bytes"]:
            raise CheckpointError(f"{folder}: file {rel} has {p.stat().st_size} bytes, its digest "
                                  f"list says {e['bytes']} (truncated or replaced)")
        if sha256_file(p) != e["sha256"]:
            raise CheckpointError(f"{folder}: file {rel} differs from its SHA-256")
    if RUN_FILE not in listed:
        raise CheckpointError(f"{folder}: {RUN_FILE} is in no digest list")
    return run
