"""What a pass scores: the run's committed exports (through their markers) and the baselines.

An export is read through `layout.export` (`list_exports`, `read_marker`): its scale, step and
digest come from the marker, and an unreadable marker refuses that export alone. An export whose
marker names no training data (no lineage), and a released checkpoint, cannot have leakage
checked: they are scored only with `allow_no_lineage`, and marked so in every result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from clef_platform.evaluate.embed import ModelSpec
from clef_platform.layout.errors import ExportError
from clef_platform.layout.export import ExportMarker, list_exports, read_marker

log = logging.getLogger(__name__)


@dataclass
class Found:
    exports: list[ModelSpec] = field(default_factory=list)          # to score, by step
    markers: dict[str, ExportMarker] = field(default_factory=dict)  # export URL -> marker
    refused: dict[str, str] = field(default_factory=dict)           # export URL -> why
    no_lineage: list[str] = field(default_factory=list)             # skipped: no lineage


def discover_exports(run_url: str, allow_no_lineage: bool = False) -> Found:
    found = Found()
    for step, url in list_exports(run_url).items():
        try:
            marker = read_marker(url)
        except ExportError as e:
            found.refused[url] = str(e)
            log.error("%s; not scored", e)
            continue
        lineage = "checked" if marker.training_data else "none"
        if lineage == "none" and not allow_no_lineage:
            log.warning("export %s: its marker names no training data (no lineage), so leakage "
                        "cannot be checked; skipped (--allow-no-lineage scores it)", url)
            found.no_lineage.append(url)
            continue
        found.exports.append(ModelSpec("export", scale=marker.scale, location=url, step=step,
                                       digest=marker.digest, lineage=lineage))
        found.markers[url] = marker
    return found


def baselines(scales: set[str], released: list[tuple[str, str]], random_baseline: bool,
              seed: int, allow_no_lineage: bool) -> tuple[list[ModelSpec], list[str]]:
    """Random encoders of each scale, and the released checkpoints (only with
    `allow_no_lineage`: we cannot know what they trained on). Returns (models, skipped)."""
    out, skipped = [], []
    if random_baseline:
        for scale in sorted(s for s in scales if s):
            out.append(ModelSpec("random", scale=scale, seed=seed))
    for path, scale in released:
        spec = ModelSpec("released", scale=scale, location=str(path), lineage="none")
        if not allow_no_lineage:
            log.warning("released checkpoint %s: no lineage, so leakage cannot be checked; "
                        "skipped (--allow-no-lineage scores it)", path)
            skipped.append(spec.checkpoint_id)
            continue
        out.append(spec)
    return out, skipped
