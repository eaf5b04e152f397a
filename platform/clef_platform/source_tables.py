"""Reading the clinical source tables (MIMIC-IV CSV / CSV.GZ) with errors that name the file.

`read_csv(path, columns)` checks the header for the columns the caller uses before reading
(a missing column is "patients.csv.gz: missing column(s) gender", not `KeyError: 'gender'`), and
turns an empty file, a truncated or corrupt gzip and undecodable text into a `TableError` naming
the file. These tables are inputs the platform reads, not formats it stores (those live in
clef_platform.layout).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from clef_platform.cli import UsageError

# What a damaged or non-CSV file raises inside pandas (the gzip layer included).
_READ_ERRORS = (pd.errors.EmptyDataError, pd.errors.ParserError, zlib.error,
                gzip.BadGzipFile, EOFError, UnicodeDecodeError)


class TableError(UsageError):
    """A source table that cannot be read as the table it should be."""


def _reason(e: BaseException) -> str:
    if isinstance(e, pd.errors.EmptyDataError):
        return "empty file (no header)"
    if isinstance(e, (zlib.error, gzip.BadGzipFile, EOFError)):
        return f"not a readable gzip file ({type(e).__name__}: {e})"
    if isinstance(e, UnicodeDecodeError):
        return "not text (cannot be decoded)"
    return "not a CSV table: " + " ".join(str(e).split())


def _check_header(path: Path, columns: Sequence[str], kw: dict) -> None:
    try:
        header = pd.read_csv(path, nrows=0, **{k: v for k, v in kw.items()
                                               if k not in ("usecols", "chunksize")})
    except _READ_ERRORS as e:
        raise TableError(f"{path}: {_reason(e)}") from None
    missing = [c for c in columns if c not in header.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)}")


def read_csv(path: str | Path, columns: Sequence[str], **kw) -> pd.DataFrame:
    """The table at `path`; `columns` are those the caller reads (checked first)."""
    path = Path(path)
    _check_header(path, columns, kw)
    try:
        return pd.read_csv(path, **kw)
    except _READ_ERRORS as e:
        raise TableError(f"{path}: {_reason(e)}") from None


def read_csv_chunks(path: str | Path, columns: Sequence[str], chunksize: int,
                    **kw) -> Iterator[pd.DataFrame]:
    """`read_csv` in chunks of `chunksize` rows; damage found mid-file names the file too."""
    path = Path(path)
    _check_header(path, columns, kw)
    try:
        yield from pd.read_csv(path, chunksize=chunksize, **kw)
    except _READ_ERRORS as e:
        raise TableError(f"{path}: {_reason(e)}") from None
