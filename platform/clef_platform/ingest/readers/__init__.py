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
    read(header, path, start, length)   int64 [T, n_sig]: the whole record, or a window
    signal_files(header)    the files holding the samples (their digest names the recording)

Adding a format is one new module in this package that calls `register`; nothing else changes.
"""

from __future__ import annotations

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

    def signal_files(self, header: HeaderInfo) -> list[Path]: ...


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
