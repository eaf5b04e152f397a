"""The adapter registry: `@register_adapter("name")` on a class; `get_adapter(name)` finds it,
or else the corpus spec of that name in the project's corpora/ folder (clef_platform.ingest.spec).

An adapter turns a corpus on disk into `RecordRef`s. It lists only (reading headers at most),
so that listing stays cheap on the driver: the workers read the signals.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from clef_platform.ingest.record import RecordRef

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[CorpusAdapter]] = {}


class CorpusAdapter:
    """Base class. Subclasses set `config_class` (a dataclass) and implement `list_records`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_class()

    def list_records(self, source: Path) -> Iterator[RecordRef]:
        raise NotImplementedError


def register_adapter(name: str):
    """Class decorator: registers an adapter under a corpus name (unique)."""

    def deco(cls: type[CorpusAdapter]) -> type[CorpusAdapter]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"adapter {name!r} is registered twice: "
                             f"{_REGISTRY[name].__module__} and {cls.__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_adapter(name: str, **options: Any) -> CorpusAdapter:
    """An adapter instance; `options` are fields of its config dataclass
    (e.g. `get_adapter("wfdb", corpus="ludb")`)."""
    from clef_platform.ingest.adapters import discover

    discover()
    if name not in _REGISTRY:
        from clef_platform.ingest.spec import SpecAdapter, load_spec, project_specs

        specs = project_specs()
        if name not in specs:
            raise KeyError(f"no adapter or corpus spec {name!r}; available: "
                           f"{', '.join(available_adapters())}") from None
        if options:
            raise TypeError(f"corpus spec {name!r} takes no options (edit {specs[name]})")
        return SpecAdapter(load_spec(specs[name]))
    cls = _REGISTRY[name]
    if dataclasses.is_dataclass(cls.config_class):
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"adapter {name!r} has no option(s) {sorted(unknown)}; "
                            f"it takes {sorted(known)}")
        return cls(cls.config_class(**options))
    if options:
        raise TypeError(f"adapter {name!r} takes no options")
    return cls()


def available_adapters() -> list[str]:
    """Registered adapters and the project's corpus specs."""
    from clef_platform.ingest.adapters import discover
    from clef_platform.ingest.spec import project_specs

    discover()
    clash = set(_REGISTRY) & set(project_specs())
    if clash:
        raise ValueError(f"corpus {sorted(clash)[0]!r} is both an adapter and a spec in corpora/")
    return sorted(set(_REGISTRY) | set(project_specs()))
