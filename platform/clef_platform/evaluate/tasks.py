"""Downstream tasks as data: YAML files loaded into typed, validated dataclasses.

A task names an ingested dataset, a label (binary, multi-label or regression) read from the
record metadata, the lead, and an evaluation scheme (the dataset's own folds, or patient-level
K-fold cross-validation). See docs/evaluation.md for the file format and how to add a task.

Labels are computed from the per-record dict of the canonical contract (docs/architecture.md):
a dotted `field` is looked up first in `record["meta"]` (age, sex, labels, native_ids, ...) and
then in the record itself (record_id, patient_id, split, ...).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from clef_model.leads import LEADS
from clef_platform.digests import sha256_file

TASKS_DIR = Path(__file__).with_name("tasks")
KINDS = ("binary", "multilabel", "regression")
SCHEMES = ("folds", "kfold")
# A class (binary positive class, or one label of a multi-label task) is probed only when it
# has at least this many positives AND this many negatives among the usable records; below it a
# macro AUROC would be dominated by noise. Tasks may raise it, never silently lower it per class.
MIN_POSITIVES = 10
# Regression tasks need at least this many labelled records.
MIN_REGRESSION_RECORDS = 30

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class TaskError(ValueError):
    """A task file is malformed."""


@dataclass(frozen=True)
class LabelMap:
    """Maps raw label values (e.g. SCP codes) to classes through a CSV table.

    `table` is resolved relative to the task file. Rows whose `filter_column` is empty, 0 or
    NaN are dropped (e.g. PTB-XL `diagnostic` == 1.0); each remaining row maps
    `key_column` -> `value_column` (`value_column` omitted: the key itself).
    """

    table: str
    key_column: str
    value_column: str | None = None
    filter_column: str | None = None


@dataclass(frozen=True)
class LabelSpec:
    kind: str                              # binary | multilabel | regression
    field: str                             # dotted path, e.g. "sex", "labels.scp_codes"
    positive: tuple[str, ...] = ()         # binary: values that are the positive class
    positive_regex: str | None = None      # binary: or a regex searched in the value
    negative: tuple[str, ...] = ()         # binary: explicit negatives (default: all others)
    separator: str | None = None           # multilabel: split a string value on this
    pattern: str | None = None             # regex applied to the value (string) before use;
    #                                        its first group is the value (records not matching
    #                                        have no label)
    map: LabelMap | None = None            # multilabel: raw value -> class through a table
    min_value: float | None = None         # regression: plausible range, others unlabelled
    max_value: float | None = None


@dataclass(frozen=True)
class SchemeSpec:
    kind: str                              # folds | kfold
    field: str | None = None               # folds: dotted path of the fold number
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    k: int = 5                             # kfold: outer folds (patient-level)
    inner_k: int = 3                       # kfold: inner folds choosing regularisation
    seed: int = 0


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str                           # name under the data root, or a URL / absolute path
    label: LabelSpec
    scheme: SchemeSpec
    description: str = ""
    lead: str = "I"
    window: int = 5000                     # samples at 500 Hz fed to the encoder
    min_positives: int = MIN_POSITIVES
    source_file: str = ""                  # where it was loaded from (not part of the hash)

    @property
    def metric(self) -> str:
        return "mae" if self.label.kind == "regression" else "auroc"

    @property
    def lead_index(self) -> int:
        return LEADS.index(self.lead)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the result of this task (hashed into the probe config)."""
        d = asdict(self)
        d.pop("source_file")
        d.pop("description")
        if self.label.map is not None:
            d["label"]["map"]["table_sha256"] = sha256_file(self._map_path())
        return d

    def _map_path(self) -> Path:
        assert self.label.map is not None
        p = Path(self.label.map.table)
        if p.is_absolute():
            return p
        return (Path(self.source_file).parent if self.source_file else TASKS_DIR) / p


# ---------------------------------------------------------------------------------- loading

def _tuple_of_str(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int, float)):
        value = [value]
    if not isinstance(value, list):
        raise TaskError(f"{what} must be a list, got {type(value).__name__}")
    return tuple(_norm(v) for v in value)


def _norm(v: Any) -> str:
    """Label values compare as strings; 1.0 and 1 are the same fold."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _take(d: dict, cls, what: str, **conv):
    allowed = {f for f in cls.__dataclass_fields__}
    unknown = set(d) - allowed
    if unknown:
        raise TaskError(f"{what}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    kwargs = {k: conv[k](v) if k in conv else v for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TaskError(f"{what}: {e}") from e


def task_from_dict(d: Mapping[str, Any], source_file: str = "") -> TaskSpec:
    where = source_file or "task"
    if not isinstance(d, Mapping):
        raise TaskError(f"{where}: a task is a mapping")
    d = dict(d)
    label = d.pop("label", None)
    scheme = d.pop("scheme", None)
    if not isinstance(label, Mapping) or not isinstance(scheme, Mapping):
        raise TaskError(f"{where}: 'label' and 'scheme' mappings are required")
    label = dict(label)
    lmap = label.pop("map", None)
    lspec = _take(label, LabelSpec, f"{where}: label",
                  positive=lambda v: _tuple_of_str(v, "positive"),
                  negative=lambda v: _tuple_of_str(v, "negative"))
    if lmap is not None:
        if not isinstance(lmap, Mapping):
            raise TaskError(f"{where}: label.map must be a mapping")
        lspec = LabelSpec(**{**asdict(lspec), "map": _take(dict(lmap), LabelMap,
                                                           f"{where}: label.map")})
    sspec = _take(dict(scheme), SchemeSpec, f"{where}: scheme",
                  train=lambda v: _tuple_of_str(v, "train"),
                  val=lambda v: _tuple_of_str(v, "val"),
                  test=lambda v: _tuple_of_str(v, "test"))
    d.pop("source_file", None)
    task = _take({**d, "label": lspec, "scheme": sspec, "source_file": source_file},
                 TaskSpec, where)
    validate_task(task)
    return task


def validate_task(t: TaskSpec) -> None:
    where = t.source_file or t.name
    if not isinstance(t.name, str) or not _NAME.match(t.name):
        raise TaskError(f"{where}: name {t.name!r} must match {_NAME.pattern}")
    if not t.dataset:
        raise TaskError(f"{where}: dataset is required")
    if t.lead not in LEADS:
        raise TaskError(f"{where}: lead {t.lead!r} is not one of {LEADS}")
    if t.window <= 0:
        raise TaskError(f"{where}: window must be positive")
    if t.min_positives < MIN_POSITIVES:
        raise TaskError(f"{where}: min_positives {t.min_positives} below the documented "
                        f"minimum {MIN_POSITIVES}")
    lab, sch = t.label, t.scheme
    if lab.kind not in KINDS:
        raise TaskError(f"{where}: label.kind must be one of {KINDS}")
    if lab.kind == "binary" and not (lab.positive or lab.positive_regex):
        raise TaskError(f"{where}: a binary label needs 'positive' or 'positive_regex'")
    if lab.kind != "binary" and (lab.positive or lab.positive_regex or lab.negative):
        raise TaskError(f"{where}: positive/negative only apply to binary labels")
    if lab.map is not None and lab.kind != "multilabel":
        raise TaskError(f"{where}: label.map only applies to multilabel")
    for rx in (lab.positive_regex, lab.pattern):
        if rx is not None:
            try:
                re.compile(rx)
            except re.error as e:
                raise TaskError(f"{where}: bad regex {rx!r}: {e}") from e
    if lab.map is not None and not t._map_path().is_file():
        raise TaskError(f"{where}: label map table {t._map_path()} not found")
    if sch.kind not in SCHEMES:
        raise TaskError(f"{where}: scheme.kind must be one of {SCHEMES}")
    if sch.kind == "folds":
        if not sch.field or not (sch.train and sch.val and sch.test):
            raise TaskError(f"{where}: a folds scheme needs field, train, val and test")
        if set(sch.train) & set(sch.val) or set(sch.train) & set(sch.test) \
                or set(sch.val) & set(sch.test):
            raise TaskError(f"{where}: train, val and test folds must not overlap")
    else:
        if sch.k < 2 or sch.inner_k < 2:
            raise TaskError(f"{where}: kfold needs k >= 2 and inner_k >= 2")


def load_task(path: str | Path) -> TaskSpec:
    path = Path(path)
    with open(path) as f:
        d = yaml.safe_load(f)
    return task_from_dict(d, source_file=str(path.resolve()))


def with_lead(tasks: list[TaskSpec], lead: str | None) -> list[TaskSpec]:
    """Every task on `lead` (`jobs/evaluate.py --lead`); the lead is part of each task's
    fingerprint, so results on another lead get their own keys. None keeps each task's own."""
    if lead is None:
        return list(tasks)
    if lead not in LEADS:
        raise TaskError(f"--lead {lead!r}: not a lead; expected one of {', '.join(LEADS)}")
    return [dataclasses.replace(t, lead=lead) for t in tasks]


def load_tasks(names: Iterable[str] | None = None,
               directory: str | Path = TASKS_DIR) -> list[TaskSpec]:
    """Tasks by name from `directory` (every *.yaml there when `names` is None).

    A name may also be a path to a YAML file elsewhere.
    """
    directory = Path(directory)
    found = {}
    for p in sorted(directory.glob("*.yaml")):
        t = load_task(p)
        if t.name in found:
            raise TaskError(f"task name {t.name!r} defined twice ({found[t.name].source_file}, {p})")
        found[t.name] = t
    if names is None:
        return list(found.values())
    out = []
    for n in names:
        if n.endswith((".yaml", ".yml")) and Path(n).is_file():
            out.append(load_task(n))
        elif n in found:
            out.append(found[n])
        else:
            raise TaskError(f"unknown task {n!r}; known: {sorted(found)}")
    return out


# ----------------------------------------------------------------------------- label values

def get_field(record: Mapping[str, Any], path: str) -> Any:
    """Dotted lookup in record["meta"], then in the record itself; None when absent."""
    for root in (record.get("meta") or {}, record):
        cur: Any = root
        ok = True
        for part in path.split("."):
            if isinstance(cur, Mapping) and part in cur:
                cur = cur[part]
            else:
                ok = False
                break
        if ok:
            return cur
    return None


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v == ""


def _as_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "\n".join(_as_text(x) for x in v)
    if isinstance(v, Mapping):
        return json.dumps(v, sort_keys=True)
    return _norm(v)


def _apply_pattern(spec: LabelSpec, v: Any) -> Any:
    if spec.pattern is None or _missing(v):
        return v
    m = re.search(spec.pattern, _as_text(v), flags=re.MULTILINE)
    if not m:
        return None
    return m.group(1) if m.groups() else m.group(0)


def _load_map(task: TaskSpec) -> dict[str, str]:
    lm = task.label.map
    assert lm is not None
    out = {}
    with open(task._map_path(), newline="") as f:
        for row in csv.DictReader(f):
            key = row.get(lm.key_column, "")
            if not key:
                continue
            if lm.filter_column:
                flt = (row.get(lm.filter_column) or "").strip()
                try:
                    keep = bool(flt) and float(flt) != 0 and not math.isnan(float(flt))
                except ValueError:
                    keep = bool(flt)
                if not keep:
                    continue
            value = row.get(lm.value_column, "").strip() if lm.value_column else key
            if value:
                out[key.strip()] = value
    return out


def _raw_multilabels(spec: LabelSpec, v: Any) -> list[str] | None:
    if _missing(v):
        return None
    if isinstance(v, Mapping):           # e.g. PTB-XL scp_codes {code: likelihood}
        items = list(v.keys())
    elif isinstance(v, (list, tuple)):
        items = list(v)
    else:
        text = _as_text(v)
        items = text.split(spec.separator) if spec.separator else [text]
    return [_norm(x).strip() for x in items if not _missing(x) and _norm(x).strip()]


@dataclass
class Labels:
    """Per-record targets of a task, restricted to the classes that can be probed."""

    y: np.ndarray                 # [N] float (regression), [N] int (binary), [N, C] int (multi)
    has_label: np.ndarray         # bool [N]: records without a usable label are left out
    classes: list[str]            # probed classes (binary: [positive name]; regression: [])
    skipped: dict[str, str] = field(default_factory=dict)   # class -> why it was skipped
    counts: dict[str, int] = field(default_factory=dict)    # class -> positives (usable records)

    @property
    def probeable(self) -> bool:
        return bool(self.classes) or (self.y.ndim == 1 and self.y.dtype.kind == "f"
                                      and not self.skipped)


def compute_labels(task: TaskSpec, records: list[Mapping[str, Any]]) -> Labels:
    """Targets for `records` and the classes that reach `task.min_positives` (others skipped)."""
    spec = task.label
    raw = [_apply_pattern(spec, get_field(r, spec.field)) for r in records]
    n = len(records)
    mp = task.min_positives

    if spec.kind == "regression":
        y = np.full(n, np.nan)
        for i, v in enumerate(raw):
            try:
                x = float(v) if not _missing(v) else math.nan
            except (TypeError, ValueError):
                x = math.nan
            if spec.min_value is not None and x < spec.min_value:
                x = math.nan
            if spec.max_value is not None and x > spec.max_value:
                x = math.nan
            y[i] = x
        has = ~np.isnan(y)
        skipped = {}
        if has.sum() < MIN_REGRESSION_RECORDS:
            skipped[spec.field] = (f"{int(has.sum())} labelled records < "
                                   f"{MIN_REGRESSION_RECORDS}")
        return Labels(y=y, has_label=has, classes=[], skipped=skipped,
                      counts={"labelled": int(has.sum())})

    if spec.kind == "binary":
        rx = re.compile(spec.positive_regex) if spec.positive_regex else None
        y = np.zeros(n, dtype=int)
        has = np.zeros(n, dtype=bool)
        for i, v in enumerate(raw):
            if _missing(v):
                continue
            text = _as_text(v)
            pos = text in spec.positive or (rx is not None and rx.search(text) is not None)
            if not pos and spec.negative and text not in spec.negative:
                continue                      # neither class: unlabelled
            y[i], has[i] = int(pos), True
        name = "|".join(spec.positive) or spec.positive_regex or "positive"
        npos, nneg = int(y[has].sum()), int((1 - y[has]).sum())
        skipped = {}
        if min(npos, nneg) < mp:
            skipped[name] = f"{npos} positives / {nneg} negatives, minimum {mp} each"
        return Labels(y=y, has_label=has, classes=[] if skipped else [name], skipped=skipped,
                      counts={name: npos, "negatives": nneg})

    # multilabel
    mapping = _load_map(task) if spec.map is not None else None
    per_record: list[set[str] | None] = []
    for v in raw:
        items = _raw_multilabels(spec, v)
        if items is None:
            per_record.append(None)
            continue
        if mapping is not None:
            items = [mapping[x] for x in items if x in mapping]
        per_record.append(set(items))
    has = np.array([s is not None for s in per_record], dtype=bool)
    all_classes = sorted({c for s in per_record if s for c in s})
    counts = {c: sum(1 for s in per_record if s and c in s) for c in all_classes}
    n_lab = int(has.sum())
    classes, skipped = [], {}
    for c in all_classes:
        if counts[c] < mp or n_lab - counts[c] < mp:
            skipped[c] = f"{counts[c]} positives / {n_lab - counts[c]} negatives, minimum {mp} each"
        else:
            classes.append(c)
    y = np.zeros((n, len(classes)), dtype=int)
    for i, s in enumerate(per_record):
        if s:
            for j, c in enumerate(classes):
                y[i, j] = int(c in s)
    return Labels(y=y, has_label=has, classes=classes, skipped=skipped, counts=counts)
