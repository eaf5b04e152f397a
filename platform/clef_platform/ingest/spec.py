"""Corpus specs: a new corpus declared in a YAML file instead of written as an adapter.

    # corpora/ludb.yaml
    name: ludb
    format: wfdb
    records: "**/*.hea"               # glob under --source, one match per record
    record_id: stem                   # stem | relative_path | {regex: '(?P<record_id>...)'}
    patient_id: record                # record | {regex: '(?P<patient_id>...)'} | {column: NAME}
    header_comments: true             # age, sex, diagnoses from the WFDB header (LUDB/CinC styles)
    table:                            # optional: a metadata table joined on a key
      path: meta.csv                  # under --source
      key: {column: record, from: record_id}
      columns: {age: age, sex: sex, ecg_time: date}
      sex_values: {"0": M, "1": F}
    lead_aliases: {MLII: II}          # optional: source channel name -> standard lead
    windows: {length_s: 10}           # optional: long records cut into windows (ingest.windows)

`load_spec(path)` reads and checks a spec completely before any record is read: an unknown
field, an unknown format, a regex without its named group or a table column that the table
lacks is a `SpecError` naming the field. A spec is an adapter made of data: `SpecAdapter`
lists `RecordRef`s exactly as a Python adapter would (specs in the project's corpora/ folder are
found by name like registered adapters; see clef_platform.ingest.adapters.registry).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clef_platform.ingest.adapters._common import (header_meta, iso_time, parse_age, parse_sex,
                                                   safe_id)
from clef_platform.ingest.readers import MEMBER_SEP, get_reader, readers
from clef_platform.ingest.record import RecordRef
from clef_platform.ingest.windows import WindowPolicy, parse_policy, window_refs

log = logging.getLogger(__name__)
CORPORA_DIR = Path(__file__).resolve().parents[3] / "corpora"

def formats() -> dict[str, str]:
    """Format name -> the file a spec's `records` glob matches for one record (the readers
    registered in clef_platform.ingest.readers)."""
    return {name: r.suffix for name, r in readers().items()}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class SpecError(ValueError):
    """A spec that cannot work: names the file and the field."""


@dataclass(frozen=True)
class IdRule:
    """How an id comes from a record: its file `stem`, its `relative_path`, a `regex` over the
    relative path (named group `group`), the `record` id, or a table `column`."""
    kind: str
    pattern: str = ""
    group: str = ""
    column: str = ""

    def regex(self) -> re.Pattern:
        return re.compile(self.pattern)


@dataclass(frozen=True)
class TableSpec:
    path: str
    key_column: str
    key_from: str = "record_id"                                # record_id | stem | relative_path
    columns: dict[str, str] = field(default_factory=dict)      # age/sex/ecg_time/patient_id
    sex_values: dict[str, str] = field(default_factory=dict)   # raw value -> M/F
    label_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    format: str
    records: str
    record_id: IdRule
    patient_id: IdRule
    header_comments: bool = True
    table: TableSpec | None = None
    source_file: str = ""
    lead_aliases: dict[str, str] = field(default_factory=dict)
    windows: WindowPolicy | None = None


_TOP = {"name", "format", "records", "record_id", "patient_id", "header_comments", "table",
        "description", "lead_aliases", "windows"}
_TABLE = {"path", "key", "columns", "sex_values", "label_columns"}
_TABLE_COLUMNS = {"age", "sex", "ecg_time"}


def _fail(where: str, fieldname: str, reason: str) -> SpecError:
    return SpecError(f"{where}: field {fieldname!r}: {reason}")


def _id_rule(where: str, fieldname: str, raw, group: str, allowed: tuple[str, ...]) -> IdRule:
    if isinstance(raw, str):
        if raw not in allowed:
            raise _fail(where, fieldname, f"expected one of {', '.join(allowed)}, "
                                          f"{{regex: ...}} or {{column: ...}}, not {raw!r}")
        return IdRule(raw)
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("regex", "column"):
        raise _fail(where, fieldname, "expected a word or a mapping with one key, regex or column")
    kind, value = next(iter(raw.items()))
    if not isinstance(value, str) or not value:
        raise _fail(where, f"{fieldname}.{kind}", "expected a non-empty string")
    if kind == "column":
        return IdRule("column", column=value)
    try:
        pattern = re.compile(value)
    except re.error as e:
        raise _fail(where, f"{fieldname}.regex", f"not a regular expression: {e}") from None
    if group not in pattern.groupindex:
        raise _fail(where, f"{fieldname}.regex", f"has no named group (?P<{group}>...)")
    return IdRule("regex", pattern=value, group=group)


def _table(where: str, raw) -> TableSpec:
    if not isinstance(raw, dict):
        raise _fail(where, "table", "expected a mapping")
    unknown = set(raw) - _TABLE
    if unknown:
        raise _fail(where, f"table.{sorted(unknown)[0]}", f"unknown field; known: {sorted(_TABLE)}")
    for need in ("path", "key"):
        if need not in raw:
            raise _fail(where, f"table.{need}", "missing")
    key = raw["key"]
    if not isinstance(key, dict) or not isinstance(key.get("column"), str):
        raise _fail(where, "table.key", "expected {column: NAME, from: record_id|stem|relative_path}")
    key_from = key.get("from", "record_id")
    if key_from not in ("record_id", "stem", "relative_path"):
        raise _fail(where, "table.key.from", f"expected record_id, stem or relative_path, not {key_from!r}")
    columns = raw.get("columns") or {}
    if not isinstance(columns, dict) or set(columns) - _TABLE_COLUMNS or not all(
            isinstance(v, str) for v in columns.values()):
        raise _fail(where, "table.columns", f"expected a mapping of {sorted(_TABLE_COLUMNS)} to "
                                           "column names")
    sex_values = {str(k): str(v) for k, v in (raw.get("sex_values") or {}).items()}
    if set(sex_values.values()) - {"M", "F"}:
        raise _fail(where, "table.sex_values", "values must be M or F")
    labels = raw.get("label_columns") or []
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise _fail(where, "table.label_columns", "expected a list of column names")
    return TableSpec(str(raw["path"]), key["column"], key_from, dict(columns), sex_values,
                     tuple(labels))


def _lead_aliases(where: str, raw) -> dict[str, str]:
    """Source channel name -> standard lead name (as clef_model.leads names it)."""
    from clef_model.leads import LEADS, lead_index

    if not isinstance(raw, dict):
        raise _fail(where, "lead_aliases", "expected a mapping of channel names to lead names")
    out = {}
    for name, lead in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise _fail(where, "lead_aliases", f"channel name {name!r} is not a non-empty string")
        if not isinstance(lead, str) or lead_index(lead) is None:
            raise _fail(where, f"lead_aliases.{name}", f"{lead!r} is not a standard lead "
                                                      f"({', '.join(LEADS)})")
        out[name.strip()] = LEADS[lead_index(lead)]
    return out


def check_table(spec: CorpusSpec, source: Path) -> None:
    """The metadata table exists under `source` and has every column the spec names."""
    table, where = spec.table, spec.source_file
    if table is None:
        return
    path = source / table.path
    if not path.is_file():
        raise _fail(where, "table.path", f"no file {path}")
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    wanted = [("table.key.column", table.key_column)]
    wanted += [(f"table.columns.{k}", v) for k, v in table.columns.items()]
    wanted += [("table.label_columns", v) for v in table.label_columns]
    if spec.patient_id.kind == "column":
        wanted.append(("patient_id.column", spec.patient_id.column))
    for fieldname, column in wanted:
        if column not in header:
            raise _fail(where, fieldname, f"column {column!r} is not in {path.name} "
                                          f"(columns: {', '.join(header)})")


def parse_spec(raw, where: str, source: Path | None = None) -> CorpusSpec:
    """A checked spec from its parsed YAML. With `source`, also checks the metadata table."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping of fields")
    unknown = set(raw) - _TOP
    if unknown:
        raise _fail(where, sorted(unknown)[0], f"unknown field; known: {sorted(_TOP)}")
    for need in ("name", "format", "records"):
        if need not in raw:
            raise _fail(where, need, "missing")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(where, "name", "expected lower-case letters, digits, '-' or '_'")
    known = formats()
    if raw["format"] not in known:
        raise _fail(where, "format", f"unknown format {raw['format']!r}; known: {sorted(known)}")
    records = raw["records"]
    if not isinstance(records, str) or not records.endswith(known[raw["format"]]):
        raise _fail(where, "records", f"expected a glob of {known[raw['format']]} files")
    if records.startswith("/") or ".." in records.split("/"):
        raise _fail(where, "records", "must stay under the corpus folder")
    record_id = _id_rule(where, "record_id", raw.get("record_id", "stem"), "record_id",
                         ("stem", "relative_path"))
    patient_id = _id_rule(where, "patient_id", raw.get("patient_id", "record"), "patient_id",
                          ("record",))
    comments = raw.get("header_comments", True)
    if not isinstance(comments, bool):
        raise _fail(where, "header_comments", "expected true or false")
    table = _table(where, raw["table"]) if raw.get("table") is not None else None
    if patient_id.kind == "column" and table is None:
        raise _fail(where, "patient_id.column", "a column needs a table")
    aliases = _lead_aliases(where, raw["lead_aliases"]) if raw.get("lead_aliases") else {}
    windows = parse_policy(raw["windows"], lambda f, r: _fail(where, f, r)) \
        if raw.get("windows") is not None else None
    spec = CorpusSpec(name, raw["format"], records, record_id, patient_id, comments, table, where,
                      aliases, windows)
    if source is not None:
        check_table(spec, source)
    return spec


def load_spec(path: str | Path, source: Path | None = None) -> CorpusSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not YAML: {str(e).splitlines()[0]}") from None
    return parse_spec(raw, str(path), source)


def project_specs() -> dict[str, Path]:
    """Specs shipped in the project's corpora/ folder, by corpus name (the file's stem)."""
    return {p.stem: p for p in sorted(CORPORA_DIR.glob("*.yaml"))} if CORPORA_DIR.is_dir() else {}


class SpecAdapter:
    """Lists a spec's records as `RecordRef`s (the same ones a Python adapter would list)."""

    def __init__(self, spec: CorpusSpec):
        self.spec = spec
        self.name = spec.name

    def list_records(self, source: Path) -> Iterator[RecordRef]:
        spec, source = self.spec, Path(source)
        check_table(spec, source)
        rows = self._table_rows(source)
        reader = get_reader(spec.format)
        members = getattr(reader, "members", None)    # files holding many records
        n = 0
        for path in sorted(source.glob(spec.records)):
            if not path.is_file():
                continue
            stem = path.name[: -len(reader.suffix)]
            rel = path.relative_to(source).with_name(stem).as_posix()
            records = [(path.with_name(stem), stem, rel)] if members is None else [
                (path.with_name(f"{stem}{MEMBER_SEP}{i}"), name, f"{rel}/{name}")
                for i, name in enumerate(members(path))]
            for base, record_stem, record_rel in records:
                ref = self._ref(base, record_stem, record_rel, rows)
                n += 1
                if spec.windows is None or not ref.source_path:
                    yield ref
                else:
                    yield from window_refs(ref, spec.windows)
        log.info("spec %s: %d records under %s", spec.name, n, source)

    def _table_rows(self, source: Path) -> dict[str, dict[str, str]]:
        table = self.spec.table
        if table is None:
            return {}
        with open(source / table.path, newline="", encoding="utf-8") as f:
            return {row[table.key_column].strip(): row for row in csv.DictReader(f)}

    def _ref(self, base: Path, stem: str, rel: str, rows: dict) -> RecordRef:
        spec = self.spec
        native = {"record_name": stem, "relative_path": rel}
        labels: dict[str, object] = {}
        record_id = self._id(spec.record_id, stem, rel, None, labels)
        table = spec.table
        row = None
        if table is not None:
            key = {"record_id": record_id, "stem": stem, "relative_path": rel}[table.key_from]
            row = rows.get(key)
            if row is None:
                labels["listing_error"] = f"{rel}: no row with {table.key_column} = {key!r} in {table.path}"
        meta = header_meta(get_reader(spec.format).header_text(str(base))) \
            if spec.header_comments else None
        age = meta.age if meta else None
        sex = meta.sex if meta else None
        ecg_time = meta.base_datetime if meta else ""
        if meta:
            labels.update(meta.labels)
        if row is not None:
            cols = table.columns
            if "age" in cols:
                age = parse_age(row[cols["age"]])
            if "sex" in cols:
                value = row[cols["sex"]].strip()
                sex = table.sex_values.get(value) if table.sex_values else parse_sex(value)
            if "ecg_time" in cols:
                ecg_time = iso_time(row[cols["ecg_time"]])
            for c in table.label_columns:
                labels[c] = row[c]
        patient = self._id(spec.patient_id, stem, rel, row, labels, record_id)
        return RecordRef(corpus=spec.name, record_id=record_id,
                         patient_id=f"{spec.name}/{patient}",
                         source_path="" if "listing_error" in labels else str(base),
                         ecg_time=ecg_time, age=age, sex=sex, native_ids=native, labels=labels,
                         format=spec.format, lead_aliases=dict(spec.lead_aliases))

    def _id(self, rule: IdRule, stem: str, rel: str, row, labels: dict,
            record_id: str = "") -> str:
        if rule.kind == "stem":
            return safe_id(stem)
        if rule.kind == "relative_path":
            return safe_id(rel.replace("/", "__"))
        if rule.kind == "record":
            return record_id
        if rule.kind == "column":
            value = (row or {}).get(rule.column, "").strip()
            if not value:
                labels.setdefault("listing_error", f"{rel}: empty {rule.column!r} in the table")
            return safe_id(value) if value else record_id
        m = rule.regex().search(rel)
        if not m or not m.group(rule.group):
            labels.setdefault("listing_error", f"{rel}: does not match {rule.pattern!r}")
            return safe_id(rel.replace("/", "__"))
        return safe_id(m.group(rule.group))

