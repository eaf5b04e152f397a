"""`ludb`: the Lobachevsky University ECG Database, a WFDB folder whose record ids are LUDB's
numbers (patient_id "ludb/17": LUDB has one record per patient)."""

from __future__ import annotations

from dataclasses import dataclass

from clef_platform.ingest.adapters.registry import register_adapter
from clef_platform.ingest.adapters.wfdb_folder import WfdbFolderAdapter, WfdbFolderConfig


@dataclass(frozen=True)
class LudbConfig(WfdbFolderConfig):
    corpus: str = "ludb"


@register_adapter("ludb")
class LudbAdapter(WfdbFolderAdapter):
    config_class = LudbConfig
