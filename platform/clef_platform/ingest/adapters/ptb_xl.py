"""`ptb-xl`: PTB-XL (ptbxl_database.csv, records500/ preferred over records100/).

patient_id "ptb-xl/<int patient_id>", record_id = ecg_id, ecg_time = recording_date. scp_codes
is a Python-literal dict in the CSV: parsed with ast.literal_eval (never eval). PTB-XL codes
sex 0 = male, 1 = female, and writes 300 for ages above 89 (de-identification): mapped to 90
with labels["age_over_89"] = True. With scp_statements.csv beside the table, the diagnostic
superclasses (NORM, MI, STTC, CD, HYP) are added as labels["diagnostic_superclass"].
"""

from __future__ import annotations

import ast
import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clef_platform.ingest.adapters._common import iso_time, parse_age, safe_id
from clef_platform.ingest.adapters.mimic_iv_ecg import _safe_relative
from clef_platform.ingest.adapters.registry import CorpusAdapter, register_adapter
from clef_platform.ingest.record import RecordRef

log = logging.getLogger(__name__)
CORPUS = "ptb-xl"
TABLES = ("ptbxl_database.csv", "ptbxl_database_subset.csv")
AGE_CENSORED = 300.0
AGE_CENSORED_AS = 90.0


@dataclass(frozen=True)
class PtbXlConfig:
    database_csv: str = ""       # default: the first of TABLES found in the corpus root
    prefer: str = "hr"           # "hr" (records500) or "lr" (records100), the other as fallback


@register_adapter(CORPUS)
class PtbXlAdapter(CorpusAdapter):
    config_class = PtbXlConfig

    def list_records(self, source: Path) -> Iterator[RecordRef]:
        source = Path(source)
        table = self._table(source)
        superclass = _superclasses(source / "scp_statements.csv")
        n = 0
        with open(table, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield self._ref(source, row, superclass)
                n += 1
        log.info("ptb-xl adapter: %d records listed from %s", n, table)

    def _table(self, source: Path) -> Path:
        names = (self.config.database_csv,) if self.config.database_csv else TABLES
        for name in names:
            if (source / name).is_file():
                return source / name
        raise FileNotFoundError(f"no {' or '.join(names)} in {source}")

    def _ref(self, source: Path, row: dict[str, str], superclass: dict[str, str]) -> RecordRef:
        ecg_id = _int_str(row.get("ecg_id"))
        patient = _int_str(row.get("patient_id"))
        native = {"ecg_id": ecg_id, "patient_id": patient}
        labels: dict[str, object] = {}
        codes = _scp_codes(row.get("scp_codes", ""))
        if codes is None:
            labels["scp_codes_error"] = f"unparseable scp_codes {row.get('scp_codes')!r}"
        else:
            labels["scp_codes"] = codes
            classes = sorted({superclass[c] for c in codes if c in superclass})
            if superclass:
                labels["diagnostic_superclass"] = classes
        if (row.get("strat_fold") or "").strip().isdigit():
            labels["strat_fold"] = int(row["strat_fold"])
        age = parse_age(row.get("age"))
        if age == AGE_CENSORED:
            age, labels["age_over_89"] = AGE_CENSORED_AS, True
        sex = {"0": "M", "1": "F"}.get(_int_str(row.get("sex")))
        record_id = ecg_id or safe_id(row.get("ecg_id") or "unknown")
        source_path, problem = self._path(source, row)
        if not ecg_id or not patient:
            problem = (f"{source}: ecg_id {row.get('ecg_id')!r} / patient_id "
                       f"{row.get('patient_id')!r} are not integers")
        if problem:
            labels["listing_error"] = problem
            source_path = ""
        return RecordRef(corpus=CORPUS, record_id=record_id,
                         patient_id=f"{CORPUS}/{patient or record_id}", source_path=source_path,
                         ecg_time=iso_time(row.get("recording_date")), age=age, sex=sex,
                         native_ids=native, labels=labels)

    def _path(self, source: Path, row: dict[str, str]) -> tuple[str, str]:
        """The preferred resolution if its header exists, else the other, else the preferred
        one anyway (so that validation reports the missing file rather than a silent drop)."""
        order = ("filename_hr", "filename_lr") if self.config.prefer == "hr" else \
            ("filename_lr", "filename_hr")
        candidates = [(row.get(c) or "").strip() for c in order]
        candidates = [c for c in candidates if c]
        for rel in candidates:
            if not _safe_relative(rel):
                return "", f"{source}: file name {rel!r} leaves the corpus root"
        for rel in candidates:
            if (source / (rel + ".hea")).is_file():
                return str(source / rel), ""
        if not candidates:
            return "", f"{source}: ecg_id {row.get('ecg_id')!r} has no filename_hr/filename_lr"
        return str(source / candidates[0]), ""


def _int_str(value: object) -> str:
    """`15709.0` -> "15709"; non-integers -> ""."""
    try:
        f = float(str(value).strip())
    except ValueError:
        return ""
    return str(int(f)) if f.is_integer() else ""


def _scp_codes(text: str) -> dict[str, float] | None:
    try:
        value = ast.literal_eval(text) if text and text.strip() else {}
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    try:
        return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        return None


def _superclasses(path: Path) -> dict[str, str]:
    """SCP code -> diagnostic class, from scp_statements.csv (empty when absent)."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            code, cls = (row.get("") or "").strip(), (row.get("diagnostic_class") or "").strip()
            if code and cls:
                out[code] = cls
    return out
