"""Patient-level train/val/test splits by a stable hash of the patient id.

The split of a record depends only on its `patient_id` (namespaced, e.g. "ludb/17") and the
ratios, so every record of a patient lands in the same split, on every run and machine.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SALT = b"clef-split-v1:"   # changing it reshuffles every split: never change it silently


@dataclass(frozen=True)
class SplitRatios:
    """Ordered (name, ratio) pairs; ratios are positive and sum to 1."""

    items: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))

    def __post_init__(self) -> None:
        names = [n for n, _ in self.items]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"split names must be unique and non-empty: {names}")
        for n, r in self.items:
            if not _NAME.match(n):
                raise ValueError(f"split name {n!r} must match {_NAME.pattern}")
            if not r > 0:
                raise ValueError(f"split ratio for {n!r} must be > 0, got {r}")
        total = sum(r for _, r in self.items)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {total}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.items)

    @classmethod
    def parse(cls, text: str) -> "SplitRatios":
        """'train=0.8,val=0.1,test=0.1' -> SplitRatios."""
        items = []
        for part in text.split(","):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"expected name=ratio, got {part!r}")
            items.append((name.strip(), float(value)))
        return cls(tuple(items))

    def to_text(self) -> str:
        return ",".join(f"{n}={r:g}" for n, r in self.items)


def patient_unit(patient_id: str) -> float:
    """A uniform number in [0, 1) that depends only on the patient id."""
    digest = hashlib.sha256(_SALT + patient_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(patient_id: str, ratios: SplitRatios) -> str:
    u = patient_unit(patient_id)
    acc = 0.0
    for name, r in ratios.items:
        acc += r
        if u < acc:
            return name
    return ratios.items[-1][0]   # float rounding at the top end
