"""Corpus adapters, discovered automatically: every module in this package that does not start
with an underscore is imported once, so adding a corpus is adding one file here.

    from clef_platform.ingest.adapters import get_adapter
    for ref in get_adapter("ludb").list_records(Path("data/ludb")): ...
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from clef_platform.ingest.adapters.registry import (
    CorpusAdapter, available_adapters, get_adapter, register_adapter,
)

__all__ = ["CorpusAdapter", "available_adapters", "discover", "get_adapter", "register_adapter"]

log = logging.getLogger(__name__)
_NOT_ADAPTERS = {"registry"}
_discovered = False


def discover() -> None:
    """Imports every adapter module in this package (idempotent)."""
    global _discovered
    if _discovered:
        return
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_") or mod.name in _NOT_ADAPTERS:
            continue
        importlib.import_module(f"{__name__}.{mod.name}")
    _discovered = True
