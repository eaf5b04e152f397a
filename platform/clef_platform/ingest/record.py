"""The records that flow through ingestion: a reference to a source record, and its outcome.

`RecordRef` is what an adapter lists (small, serialisable, no signal). Reading and validating a
ref gives either a `CanonicalRecord` (stored) or a `Quarantined` (rejected, with a reason code).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RecordRef:
    corpus: str                 # registered adapter name, e.g. "ludb", "mimic-iv-ecg"
    record_id: str              # corpus-native record id, e.g. "40689238" or "17"
    patient_id: str             # namespaced: "<corpus>/<native patient id or record id>"
    source_path: str            # WFDB record path without extension (what wfdb.rdrecord takes)
    ecg_time: str = ""          # ISO-8601 recording time, "" where the corpus has none
    age: float | None = None
    sex: str | None = None      # "M", "F" or None
    native_ids: dict[str, str] = field(default_factory=dict)   # e.g. subject_id, study_id
    labels: dict[str, object] = field(default_factory=dict)    # diagnoses, scp_codes, ...
    format: str = "wfdb"        # the reader (clef_platform.ingest.readers) of source_path
    # source channel name -> standard lead name (a corpus spec's lead_aliases, e.g. MLII -> II)
    lead_aliases: dict[str, str] = field(default_factory=dict)
    # a window of a longer record (ingest.windows.Window as a dict), None for a whole record
    window: dict[str, object] | None = None


@dataclass
class CanonicalRecord:
    """A whole record in canonical form: LEADS order, 500 Hz, all leads, full length.

    Stored losslessly as int16 with a per-lead gain and baseline:
    millivolts = (digital - baseline) / gain.
    """

    ref: RecordRef
    digital: np.ndarray         # int16 [12, T]; absent leads are zeros
    gain: np.ndarray            # float32 [12], ADC units per mV (1.0 for absent leads)
    baseline: np.ndarray        # float32 [12]
    lead_mask: np.ndarray       # bool [12]: present and usable
    fs_original: float
    quality_flags: dict[str, list[str]] = field(default_factory=dict)  # lead -> problems
    # SHA-256 of the source record's signal files as stored (a window: its parent's), so the
    # windowed and whole forms of one recording are known to be the same in any dataset
    source_sha256: str = ""

    def millivolts(self) -> np.ndarray:
        return ((self.digital.astype(np.float32) - self.baseline[:, None])
                / self.gain[:, None]).astype(np.float32)


@dataclass(frozen=True)
class Quarantined:
    ref: RecordRef
    reason: str                 # stable code from clef_platform.ingest.validate.REASONS
    detail: str                 # what a person needs to act on it
