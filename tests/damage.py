"""Ways a stored shard gets damaged, applied in place to a real shard file (for the tests of
verified reads). Each keeps what a careless copy, a bad disk or a tamperer would leave."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def overwrite_signal(path: Path) -> None:
    """Overwrite 64 bytes inside the first signal member's data (size unchanged)."""
    m = next(m for m in _members(path) if m.name.endswith(".signal.npy"))
    with open(path, "r+b") as f:
        f.seek(m.offset_data + m.size // 2)
        f.write(b"\x55" * 64)


def cut_at_member_boundary(path: Path) -> None:
    """Keep only the first half of the samples, whole: the tar ends cleanly at a header."""
    members = _members(path)
    first_of_sample = [m for i, m in enumerate(members)
                       if i == 0 or members[i - 1].name.split(".")[0] != m.name.split(".")[0]]
    os.truncate(path, first_of_sample[len(first_of_sample) // 2].offset)


def cut_mid_member(path: Path) -> None:
    """Cut inside the data of a member in the middle of the shard."""
    m = _members(path)[len(_members(path)) // 2]
    os.truncate(path, m.offset_data + m.size // 2)


def flip_header(path: Path) -> None:
    """Flip one byte of the name field in the header of a member in the middle."""
    m = _members(path)[len(_members(path)) // 2 + 1]
    with open(path, "r+b") as f:
        f.seek(m.offset + 3)
        b = f.read(1)
        f.seek(m.offset + 3)
        f.write(bytes([b[0] ^ 0x20]))


KINDS = {"overwrite_signal": overwrite_signal, "cut_at_member_boundary": cut_at_member_boundary,
         "cut_mid_member": cut_mid_member, "flip_header": flip_header}
