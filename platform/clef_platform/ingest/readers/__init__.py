"""Signal readers, one module per source format, each registering itself here.

A reader turns a record's files into what canonicalisation needs (`clef_platform.ingest.read`'s
`HeaderInfo` and digital samples), so everything after reading (validation, lead mapping,
resampling, int16 storage, windows) is the same whatever the format:

    name                    what a corpus spec's `format:` says ("wfdb", "cpsc-mat", ...)
    suffix                  the file a spec's `records` glob matches, one per record
    header(path)            the strictly checked header (Reject on a bad one); `path` is the
                            record's path without the suffix, as WFDB names records
    header_text(path)       bounded text of the record's metadata in WFDB comment style
                            ("#Age: 52"), for a spec's header_comments at listing time
    read(header, path, start, length)   integer samples [T, n_sig] (int64, or int16 as a
                            16-bit file stores them): the whole record, or a window
    source_sha256(header)   SHA-256 of the record's samples as stored (its signal files, or its
                            slice of a many-record file): it names the recording in any dataset
    members(file)           optional, for files holding many records (CODE-15's HDF5): their
                            names; the listing then gives one record per member, at
                            `<path>::<index>`

Adding a format is one new module in this package that calls `register`; nothing else changes.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from pathlib import Path
from typing import Protocol

import numpy as np

from clef_platform.ingest.read import HeaderInfo


class Reader(Protocol):
    name: str
    suffix: str

    def header(self, path: str) -> HeaderInfo: ...

    def header_text(self, path: str) -> str: ...

    def read(self, header: HeaderInfo, path: str, start: int = 0,
             length: int | None = None) -> np.ndarray: ...

    def source_sha256(self, header: HeaderInfo) -> str: ...


MEMBER_SEP = "::"     # <file without suffix>::<row>: one record of a many-record file
_CHUNK = 1 << 20


def files_sha256(files: list[Path]) -> str:
    """SHA-256 over files in order, streamed (bounded memory whatever their size)."""
    h = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def comments_as_text(reader: Reader, path: str) -> str:
    """A reader's header comments as WFDB comment lines, for `header_text` of formats whose
    metadata sits in the file itself ("#Age: 52"); "" for an unreadable record, which reading
    then quarantines with the reason."""
    from clef_platform.ingest.validate import Reject

    try:
        return "".join(f"#{c}\n" for c in reader.header(path).comments)
    except Reject:
        return ""


_READERS: dict[str, Reader] = {}
_loaded = False


def register(reader: Reader) -> Reader:
    if reader.name in _READERS:
        raise ValueError(f"two readers named {reader.name!r}")
    _READERS[reader.name] = reader
    return reader


def _load() -> None:
    global _loaded
    if not _loaded:
        for m in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{m.name}")
        _loaded = True


def readers() -> dict[str, Reader]:
    _load()
    return dict(_READERS)


def get_reader(name: str) -> Reader:
    _load()
    try:
        return _READERS[name]
    except KeyError:
        raise KeyError(f"no reader for format {name!r}; known: {sorted(_READERS)}") from None
