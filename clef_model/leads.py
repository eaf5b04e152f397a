"""The canonical 12-lead order and lead-name normalisation.

Corpora disagree on order and case (MIMIC-IV-ECG stores aVF before aVL, LUDB writes `avl`,
PTB-XL `AVL`); everything downstream of ingestion sees leads in this order.
"""

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF",
                          "V1", "V2", "V3", "V4", "V5", "V6")
N_LEADS = len(LEADS)
_BY_UPPER = {name.upper(): i for i, name in enumerate(LEADS)}


def lead_index(name: str) -> int | None:
    """Index of a lead name in LEADS, case-insensitive; None for a non-standard name."""
    return _BY_UPPER.get(name.strip().upper())
