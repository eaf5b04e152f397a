"""Drops values outside the configured plausibility ranges, logging each with its reason."""

from __future__ import annotations

import logging

import pandas as pd

from clef_platform.features.config import PlausibilityRanges
from clef_platform.features.schema import Rejects

log = logging.getLogger(__name__)


def filter_plausible(obs: pd.DataFrame, ranges: PlausibilityRanges, rejects: Rejects
                     ) -> pd.DataFrame:
    """Keeps rows whose value lies in its feature's range (features without one pass)."""
    keep = pd.Series(True, index=obs.index)
    for feature, group in obs.groupby("feature"):
        bounds = ranges.get(str(feature))
        if bounds is None:
            continue
        lo, hi = bounds
        bad = ~group["value"].between(lo, hi)
        if bad.any():
            dropped = group[bad]
            for source, part in dropped.groupby("source"):
                rejects.add(part.assign(raw=part["value"]), str(source), str(feature),
                            f"implausible:outside[{lo:g},{hi:g}]")
            log.info("dropped %d implausible %s values", int(bad.sum()), feature)
            keep[dropped.index] = False
    return obs[keep].reset_index(drop=True)
