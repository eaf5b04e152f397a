"""`wfdb`: any folder of WFDB records (.dat or WFDB .mat signals), searched recursively.

Age, sex and diagnoses come from the header comments (LUDB and CinC 2021 styles, see
_common.header_meta). A folder corpus has no patient ids, so each record is its own patient:
patient_id = "<corpus>/<record id>".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clef_platform.ingest.adapters._common import header_meta, read_header_head, safe_id
from clef_platform.ingest.adapters.registry import CorpusAdapter, register_adapter
from clef_platform.ingest.record import RecordRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WfdbFolderConfig:
    corpus: str = "wfdb"              # namespace of record and patient ids ("ludb" -> "ludb/17")
    record_id: str = "stem"           # "stem" (record name; unique in LUDB, CinC, Chapman) or
                                      # "relative_path" (sub/dir/name, for corpora that repeat names)
    read_comments: bool = True        # age/sex/diagnoses from the header (reads each .hea once)


@register_adapter("wfdb")
class WfdbFolderAdapter(CorpusAdapter):
    config_class = WfdbFolderConfig

    def list_records(self, source: Path) -> Iterator[RecordRef]:
        cfg: WfdbFolderConfig = self.config
        if cfg.record_id not in ("stem", "relative_path"):
            raise ValueError(f"record_id must be 'stem' or 'relative_path', not {cfg.record_id!r}")
        source = Path(source)
        n = 0
        for hea in _headers(source):
            stem = hea.name[: -len(".hea")]
            rel = hea.relative_to(source).with_name(stem).as_posix()
            record_id = safe_id(stem if cfg.record_id == "stem" else rel.replace("/", "__"))
            meta = header_meta(read_header_head(hea)) if cfg.read_comments else None
            yield RecordRef(
                corpus=cfg.corpus,
                record_id=record_id,
                patient_id=f"{cfg.corpus}/{record_id}",
                source_path=str(hea.with_name(stem)),
                ecg_time=meta.base_datetime if meta else "",
                age=meta.age if meta else None,
                sex=meta.sex if meta else None,
                native_ids={"record_name": stem, "relative_path": rel},
                labels=dict(meta.labels) if meta else {},
            )
            n += 1
        log.info("wfdb adapter: %d records under %s (corpus %s)", n, source, cfg.corpus)


def _headers(root: Path) -> Iterator[Path]:
    """*.hea files under root, in a stable order, streaming (no full list in memory)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".hea"):
                yield Path(dirpath) / name
