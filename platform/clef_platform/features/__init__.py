"""Feature store: MIMIC-IV hosp ETL, manifest header demographics, a generated Feast repository
(demographics, vitals, labs, conditions, and SCORE2 at the ECG time), and the RiskClient.

Light imports only here: Feast takes ~8 s to import, so modules that need it import it lazily.
See docs/features.md for the design.
"""

from clef_platform.features.config import FeatureStoreConfig, PlausibilityRanges

__all__ = ["FeatureStoreConfig", "PlausibilityRanges"]
