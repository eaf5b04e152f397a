"""Helpers shared by adapters: header comments, age/sex/time normalisation, safe ids.

Everything here tolerates bad input (returns None or "" and lets validation decide): a listing
must never stop on one odd record, and must never drop one either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from clef_platform.ingest.read import iso_datetime, parse_base_datetime

HEADER_COMMENT_MAX_BYTES = 64 * 1024
_SAFE_ID = re.compile(r"[^A-Za-z0-9_-]+")
_LUDB_FIELD = re.compile(r"^<\s*([^>]+?)\s*>\s*:\s*(.*)$")           # `<age>: 51`
_CINC_FIELD = re.compile(r"^(Age|Sex|Dx|Rx|Hx|Sx)\s*:\s*(.*)$", re.I)  # `Age: 78`
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


@dataclass
class HeaderMeta:
    age: float | None = None
    sex: str | None = None
    base_datetime: str = ""
    fields: dict[str, str] = field(default_factory=dict)     # lower-cased comment fields
    labels: dict[str, object] = field(default_factory=dict)


def safe_id(value: str) -> str:
    """A corpus-native id made safe to use in keys and paths (no separators, no `..`).

    Ids that are already safe come back unchanged. When cleaning changes the text, the first 8
    hex digits of the SHA-256 of the raw id are appended, so ids that clean alike stay apart:
    `ecgé` -> `ecg_1a2b3c4d`, `ecgü` -> `ecg_5e6f7a8b`, and a garbled `rec 1` never takes the
    valid `rec_1`'s id. The raw id stays in the record's `native_ids` (docs/ingestion.md)."""
    cleaned = _SAFE_ID.sub("_", value.strip()).strip("_") or "_"
    if cleaned != value:
        cleaned = f"{cleaned}_{hashlib.sha256(value.encode('utf-8')).hexdigest()[:8]}"
    return cleaned


def parse_age(value: object) -> float | None:
    """`51`, `51.0`, `89+`, `>89` -> a number; NaN, Unknown, empty -> None. Range checks are
    validation's job, not the adapter's."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(float(value)) else float(value)
    m = _NUMBER.search(str(value))
    return float(m.group()) if m else None


def parse_sex(value: object) -> str | None:
    v = str(value).strip().lower() if value is not None else ""
    if v in ("m", "male", "man"):
        return "M"
    if v in ("f", "female", "woman"):
        return "F"
    return None


def iso_time(value: object) -> str:
    """`2180-07-23 08:44:00` (MIMIC, PTB-XL) -> `2180-07-23T08:44:00`; unparseable -> ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        return iso_datetime(dt.datetime.fromisoformat(str(value).strip()))
    except ValueError:
        return ""


def read_header_head(hea: Path) -> str:
    """The header text (bounded): listing reads headers, never signals."""
    try:
        with open(hea, "rb") as f:
            return f.read(HEADER_COMMENT_MAX_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def header_meta(text: str) -> HeaderMeta:
    """Age, sex, diagnoses and base date/time from a WFDB header, LUDB or CinC style.

    LUDB: `#<age>: 51`, `#<sex>: F`, `#<diagnoses>:` followed by one diagnosis per comment
    line. CinC 2021 / Chapman: `# Age: 78`, `# Sex: Male`, `# Dx: 164934002,426783006`
    (SNOMED CT codes). MIMIC-IV-ECG: `# <subject_id>: 10000032`.
    """
    meta = HeaderMeta()
    in_diagnoses = False
    diagnoses: list[str] = []
    first_line = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            first_line = first_line or line
            continue
        body = line[1:].strip()
        m = _LUDB_FIELD.match(body)
        if m:
            key, value = m.group(1).strip().lower(), m.group(2).strip()
            in_diagnoses = key == "diagnoses"
            if value or not in_diagnoses:
                meta.fields[key] = value
            continue
        if in_diagnoses:
            if body:
                diagnoses.append(body.rstrip(" ."))
            continue
        m = _CINC_FIELD.match(body)
        if m:
            meta.fields[m.group(1).lower()] = m.group(2).strip()
    meta.age = parse_age(meta.fields.get("age"))
    meta.sex = parse_sex(meta.fields.get("sex"))
    if diagnoses:
        meta.labels["diagnoses"] = diagnoses
    dx = meta.fields.get("dx", "")
    codes = [c.strip() for c in dx.split(",") if c.strip().isdigit()]
    if codes:
        meta.labels["snomed_ct"] = codes
    meta.base_datetime = _record_line_datetime(first_line)
    return meta


def _record_line_datetime(record_line: str) -> str:
    tok = record_line.split()
    value = parse_base_datetime(tok[4], tok[5]) if len(tok) >= 6 else None
    return "" if value is None else iso_datetime(value)
