"""WFDB records (.hea + signal files): the platform's strict header parser and 16-bit fast path
(clef_platform.ingest.read), wfdb-python for every other signal format."""

from __future__ import annotations

from pathlib import Path

from clef_platform.ingest import read
from clef_platform.ingest.readers import files_sha256, register


class WfdbReader:
    name = "wfdb"
    suffix = ".hea"

    def header(self, path: str) -> read.HeaderInfo:
        return read.load_header(path)

    def header_text(self, path: str) -> str:
        from clef_platform.ingest.adapters._common import read_header_head

        return read_header_head(Path(path + self.suffix))

    def read(self, header: read.HeaderInfo, path: str, start: int = 0, length: int | None = None):
        return read.read_signals(header, path, start, length)

    def source_sha256(self, header: read.HeaderInfo) -> str:
        folder = Path(header.path).parent
        return files_sha256([folder / name
                             for name in dict.fromkeys(c.file_name for c in header.channels)])


register(WfdbReader())
