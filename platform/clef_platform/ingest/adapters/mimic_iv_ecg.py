"""`mimic-iv-ecg`: MIMIC-IV-ECG v1.0 (record_list.csv + files/pNNNN/pNNNNNNNN/sNNNNNNNN/).

patient_id "mimic-iv-ecg/<subject_id>", record_id = study_id. The recording time is the header's
base date and time; the listing takes it from record_list.csv's ecg_time (the same value, and
no header read per record on the driver), and `process_record` replaces it with the header's
when they differ. Without record_list.csv the files/ tree is walked and the headers read.
Age and sex are not in this corpus: the feature store joins them on subject_id.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from clef_platform.ingest.adapters._common import (
    header_meta, iso_time, read_header_head, safe_id,
)
from clef_platform.ingest.adapters.registry import CorpusAdapter, register_adapter
from clef_platform.ingest.record import RecordRef

log = logging.getLogger(__name__)
CORPUS = "mimic-iv-ecg"


@dataclass(frozen=True)
class MimicIvEcgConfig:
    record_list: str = "record_list.csv"   # relative to the corpus root
    time_from_header: bool = False         # read each header at listing (slower, same value)


def study_path(subject_id: str, study_id: str) -> str:
    """MIMIC-IV-ECG's layout for a study, relative to the corpus root."""
    return f"files/p{subject_id[:4]}/p{subject_id}/s{study_id}/{study_id}"


@register_adapter(CORPUS)
class MimicIvEcgAdapter(CorpusAdapter):
    config_class = MimicIvEcgConfig

    def list_records(self, source: Path) -> Iterator[RecordRef]:
        source = Path(source)
        table = source / self.config.record_list
        rows = _csv_rows(table) if table.is_file() else _walk_rows(source)
        if not table.is_file():
            log.warning("%s not found: walking %s/files for headers", table, source)
        n = 0
        for row in rows:
            yield self._ref(source, row)
            n += 1
        log.info("mimic-iv-ecg adapter: %d records under %s", n, source)

    def _ref(self, source: Path, row: dict[str, str]) -> RecordRef:
        subject = (row.get("subject_id") or "").strip()
        study = (row.get("study_id") or "").strip()
        native = {"subject_id": subject, "study_id": study,
                  "file_name": (row.get("file_name") or study).strip()}
        problem = ""
        if not (subject.isdigit() and study.isdigit()):
            problem = f"{source}: subject_id {subject!r} / study_id {study!r} are not numeric"
        rel = (row.get("path") or "").strip() or (study_path(subject, study) if not problem else "")
        if not problem and not _safe_relative(rel):
            problem = f"{source}: path {rel!r} for study {study} leaves the corpus root"
        if problem:
            record_id = safe_id(study or "unknown")
            return RecordRef(corpus=CORPUS, record_id=record_id,
                             patient_id=f"{CORPUS}/{safe_id(subject or 'unknown')}",
                             source_path="", native_ids=native,
                             labels={"listing_error": problem})
        source_path = str(source / rel)
        ecg_time = iso_time(row.get("ecg_time"))
        if self.config.time_from_header or not ecg_time:
            ecg_time = header_meta(read_header_head(Path(source_path + ".hea"))).base_datetime \
                or ecg_time
        return RecordRef(corpus=CORPUS, record_id=study, patient_id=f"{CORPUS}/{subject}",
                         source_path=source_path, ecg_time=ecg_time, native_ids=native)


def _safe_relative(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def _csv_rows(table: Path) -> Iterator[dict[str, str]]:
    with open(table, newline="", encoding="utf-8") as f:   # streamed: 800k rows in MIMIC
        yield from csv.DictReader(f)


def _walk_rows(source: Path) -> Iterator[dict[str, str]]:
    """Rows rebuilt from files/pNNNN/pSUBJECT/sSTUDY/STUDY.hea when record_list.csv is absent."""
    files = source / "files"
    for dirpath, dirnames, filenames in os.walk(files):
        dirnames.sort()
        d = Path(dirpath)
        for name in sorted(filenames):
            if not name.endswith(".hea"):
                continue
            subject = d.parent.name[1:] if d.parent.name.startswith("p") else ""
            study = d.name[1:] if d.name.startswith("s") else ""
            rel = (d / name[: -len(".hea")]).relative_to(source).as_posix()
            yield {"subject_id": subject, "study_id": study, "file_name": name[: -len(".hea")],
                   "ecg_time": "", "path": rel}
