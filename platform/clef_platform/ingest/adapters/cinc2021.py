"""`cinc2021`: PhysioNet/CinC Challenge 2021 WFDB .mat records (Georgia, PTB-XL, Ningbo,
Chapman...): SNOMED CT codes from `# Dx:`, age and sex from `# Age:`, `# Sex:`. No patient ids,
so patient_id is "cinc2021/<record>"."""

from __future__ import annotations

from dataclasses import dataclass

from clef_platform.ingest.adapters.registry import register_adapter
from clef_platform.ingest.adapters.wfdb_folder import WfdbFolderAdapter, WfdbFolderConfig


@dataclass(frozen=True)
class Cinc2021Config(WfdbFolderConfig):
    corpus: str = "cinc2021"


@register_adapter("cinc2021")
class Cinc2021Adapter(WfdbFolderAdapter):
    config_class = Cinc2021Config
