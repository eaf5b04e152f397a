"""Typed configuration of the feature store (views' lookback windows, online store, region)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

VIEWS: tuple[str, ...] = ("demographics", "vitals", "labs", "conditions")


@dataclass(frozen=True)
class PlausibilityRanges:
    """Inclusive [low, high] ranges; a value outside is dropped with reason "implausible".

    Wide enough for real extremes, narrow enough to catch unit and typing errors (the demo holds
    a BMI of 4649 and a height of 5 inches). Units are the stored ones (after conversion).
    """
    age: tuple[float, float] = (0.0, 120.0)            # years
    sbp: tuple[float, float] = (60.0, 260.0)           # mmHg
    dbp: tuple[float, float] = (25.0, 160.0)           # mmHg
    bmi: tuple[float, float] = (10.0, 80.0)            # kg/m2
    height_cm: tuple[float, float] = (120.0, 230.0)    # 47-91 inches
    weight_kg: tuple[float, float] = (25.0, 350.0)
    total_chol: tuple[float, float] = (1.0, 20.0)      # mmol/L (39-773 mg/dL)
    hdl: tuple[float, float] = (0.1, 5.0)              # mmol/L (4-193 mg/dL)

    def get(self, feature: str) -> tuple[float, float] | None:
        return getattr(self, feature, None)


def _default_ttl() -> dict[str, timedelta]:
    # Demographics are static facts (timedelta(0) = no expiry). A blood pressure or a lipid
    # panel older than a few years no longer describes the patient; a diagnosis list is taken
    # from the latest discharge within 5 years.
    return {"demographics": timedelta(0), "vitals": timedelta(days=365 * 2),
            "labs": timedelta(days=365 * 5), "conditions": timedelta(days=365 * 5)}


@dataclass(frozen=True)
class FeatureStoreConfig:
    """What the generated Feast repository looks like.

    ttl: lookback window per view; timedelta(0) means unlimited. online_store: "sqlite" (a file
    in the repository) or "redis" (redis_connection, e.g. "127.0.0.1:6379"; taken from the
    environment variable CLEF_REDIS_CONNECTION when not given, so no address or password is
    written into code).
    """
    project: str = "clef"
    ttl: dict[str, timedelta] = field(default_factory=_default_ttl)
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection: str | None = None
    region: str = "moderate"
    plausibility: PlausibilityRanges = field(default_factory=PlausibilityRanges)

    def __post_init__(self) -> None:
        from clef_model.risk import normalise_region
        missing = set(VIEWS) - set(self.ttl)
        if missing:
            raise ValueError(f"ttl lacks views {sorted(missing)}")
        if any(v < timedelta(0) for v in self.ttl.values()):
            raise ValueError("ttl must be >= 0")
        if self.online_store not in ("sqlite", "redis"):
            raise ValueError(f"online_store must be sqlite or redis, not {self.online_store!r}")
        object.__setattr__(self, "region", normalise_region(self.region))

    def redis_address(self) -> str:
        conn = self.redis_connection or os.environ.get("CLEF_REDIS_CONNECTION")
        if not conn:
            raise ValueError("online_store='redis' needs redis_connection or CLEF_REDIS_CONNECTION")
        return conn

    def ttl_seconds(self) -> dict[str, float]:
        return {k: v.total_seconds() for k, v in self.ttl.items()}
