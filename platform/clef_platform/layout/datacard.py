"""A dataset's data card, `<dataset>/datacard/`: what an ingest stored, for people.

    <dataset>/datacard/index.html     one section per entry of SECTIONS, each with its figures
    <dataset>/datacard/card.json      every figure's numbers, by section (what the page shows)
    <dataset>/datacard/<section>.png  one per section; examples: example-ecgs-<n>-<key>.png

Written and read only here: `write_data_card(url)` after an ingest (jobs/ingest.py) or on
demand (jobs/datacard.py), `read_data_card(url)` for the numbers. Everything comes from the
committed dataset (`open_dataset`: manifest, quarantine, and a few records read back through
the verified shard reader), so the card of a dataset is a function of its digest: rendering it
twice gives the same card.json. The page is built from card.json alone, so nothing on it was not
in the numbers; every string that came from data is HTML-escaped, and file names never hold
data except sanitised record keys.
"""

from __future__ import annotations

import html
import io
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clef_model.leads import LEADS
from clef_platform.layout.pages import IMAGES_OK_SCRIPT
from clef_platform.layout.dataset import Dataset, DatasetError, open_dataset, read_quarantine
from clef_platform.layout.shards import read_shard

log = logging.getLogger(__name__)

CARD_VERSION = 1
DATACARD_PREFIX = "datacard/"
INDEX_KEY = f"{DATACARD_PREFIX}index.html"
CARD_KEY = f"{DATACARD_PREFIX}card.json"
SECTIONS = ("Records and windows", "Patients", "Durations", "Sampling rates before resampling",
            "Leads present", "Age and sex", "Labels", "Quarantine", "Example ECGs")
# Window columns an ingest with a window policy adds to the manifest; a row with a parent is a
# window of that parent record. The card works with and without them.
PARENT_COLUMN = "parent_record_id"
_MAX_TEXT = 80          # label values are free text: cut for the page and the JSON alike


@dataclass(frozen=True)
class DataCardConfig:
    examples: int = 3                 # stored records plotted, from the first shard by name
    example_seconds: float = 10.0     # of each example, from its start
    label_keys: int = 12              # label keys shown, most frequent first
    label_values: int = 10            # top values shown per label key
    age_bin_years: int = 10
    duration_bins: int = 20


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


@dataclass
class Section:
    title: str
    data: dict[str, Any]                                   # the numbers (card.json)
    facts: list[tuple[str, str]] = field(default_factory=list)   # the page's table
    figures: dict[str, bytes] = field(default_factory=dict)      # file name -> PNG

    def to_json(self) -> dict[str, Any]:
        return {**self.data, "facts": [list(f) for f in self.facts],
                "figures": list(self.figures)}


# -------------------------------------------------------------------------------- plotting

def _plt():
    # Imported on first use: reading a card never needs matplotlib.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    fig.tight_layout()
    buf = io.BytesIO()
    # No timestamps in the PNG, so the same dataset gives the same bytes.
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _bars(title: str, names: list[str], values: list[float], xlabel: str = "",
          ylabel: str = "records", horizontal: bool = False) -> bytes:
    plt = _plt()
    if horizontal:
        fig, ax = plt.subplots(figsize=(8, max(2.0, 0.35 * len(names) + 1)))
        ax.barh(range(len(names)), values)
        ax.set_yticks(range(len(names)), [_short(n, 45) for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
    else:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(range(len(names)), values)
        ax.set_xticks(range(len(names)), names, fontsize=8,
                      rotation=45 if len(names) > 8 else 0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if not names:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    return _png(fig)


def _hist(title: str, edges: list[float], counts: list[int], xlabel: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if counts:
        ax.stairs(counts, edges, fill=True)
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    return _png(fig)


# ------------------------------------------------------------------------------- helpers

def _short(text: str, n: int = _MAX_TEXT) -> str:
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def _num(x: float) -> str:
    return f"{x:g}"


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"min": None, "median": None, "max": None}
    return {"min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max())}


def _histogram(values: np.ndarray, bins) -> tuple[list[float], list[int]]:
    if values.size == 0:
        return [], []
    counts, edges = np.histogram(values, bins=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


def _counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


# ------------------------------------------------------------------------------ sections

def records_and_windows(frame: pd.DataFrame, n_shards: int) -> Section:
    """Rows stored; where the manifest has window columns, the rows that are windows (a
    parent_record_id) and their distinct parents."""
    windowed = PARENT_COLUMN in frame.columns
    if windowed:
        parent = frame[PARENT_COLUMN]
        is_window = parent.notna() & (parent.astype(str) != "")
        windows = int(is_window.sum())
        # parent ids are the corpus's record ids: distinct per corpus
        parents = len(set(zip(frame["corpus"][is_window], parent[is_window])))
    else:
        is_window = pd.Series(False, index=frame.index)
        windows = parents = 0
    by_split = _counts(frame["split"])
    data = {"records": len(frame), "windows": windows, "whole_records": len(frame) - windows,
            "parent_records": parents, "window_columns": windowed, "shards": n_shards,
            "by_split": by_split}
    facts = [("records stored", str(len(frame))), ("shards", str(n_shards))]
    facts += [("windows" if windowed else "windows (no window columns in the manifest)",
               str(windows))]
    if windowed:
        facts += [("parent records of the windows", str(parents)),
                  ("whole records (not windows)", str(len(frame) - windows))]
    facts += [(f"split {k}", str(v)) for k, v in by_split.items()]
    plt = _plt()
    splits = list(by_split)
    whole = [int(((frame["split"] == s) & ~is_window).sum()) for s in splits]
    wins = [int(((frame["split"] == s) & is_window).sum()) for s in splits]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(splits, whole, label="whole records")
    if windows:
        ax.bar(splits, wins, bottom=whole, label="windows")
        ax.legend(fontsize=8)
    ax.set_title("Records per split")
    ax.set_ylabel("records")
    return Section("Records and windows", data, facts, {"records-and-windows.png": _png(fig)})


def patients(frame: pd.DataFrame) -> Section:
    per_patient = frame.groupby("patient_id").size() if len(frame) else pd.Series(dtype=int)
    hist = {str(k): int(v) for k, v in per_patient.value_counts().sort_index().items()}
    by_split = {str(k): int(v) for k, v in
                frame.groupby("split")["patient_id"].nunique().sort_index().items()}
    data = {"patients": int(per_patient.size), "records_per_patient": hist,
            "records_per_patient_stats": _stats(per_patient.to_numpy()),
            "patients_by_split": by_split}
    facts = [("patients", str(per_patient.size))]
    facts += [(f"patients with {k} record(s)", str(v)) for k, v in hist.items()]
    facts += [(f"patients in split {k}", str(v)) for k, v in by_split.items()]
    png = _bars("Records per patient", list(hist), list(hist.values()),
                xlabel="records of the patient", ylabel="patients")
    return Section("Patients", data, facts, {"patients.png": png})


def durations(frame: pd.DataFrame, cfg: DataCardConfig) -> Section:
    """Stored length: n_samples at the canonical rate (the manifest's `fs` where it has one)."""
    from clef_platform.ingest.canonical import CanonicalConfig

    fs = frame["fs"].to_numpy(float) if "fs" in frame.columns \
        else np.full(len(frame), float(CanonicalConfig().target_fs))
    seconds = frame["n_samples"].to_numpy(float) / fs
    edges, counts = _histogram(seconds, cfg.duration_bins)
    stats = _stats(seconds)
    data = {"fs": sorted({float(x) for x in fs}), "seconds": stats,
            "total_hours": float(seconds.sum() / 3600), "histogram": {"edges": edges,
                                                                     "counts": counts}}
    facts = [("stored at (Hz)", ", ".join(_num(x) for x in data["fs"]) or "-"),
             ("total (hours)", f"{data['total_hours']:.2f}")]
    facts += [(f"{k} (s)", "-" if v is None else _num(v)) for k, v in stats.items()]
    return Section("Durations", data, facts,
                   {"durations.png": _hist("Record durations", edges, counts, "seconds")})


def sampling_rates(frame: pd.DataFrame) -> Section:
    rates = {_num(float(k)): int(v) for k, v in
             frame["fs_original"].value_counts().sort_index().items()}
    data = {"fs_original": rates}
    facts = [(f"{k} Hz", str(v)) for k, v in rates.items()]
    png = _bars("Sampling rate of the source", [f"{k} Hz" for k in rates], list(rates.values()))
    return Section("Sampling rates before resampling", data, facts,
                   {"sampling-rates-before-resampling.png": png})


def leads_present(frame: pd.DataFrame) -> Section:
    masks = np.array(frame["lead_mask"].tolist(), dtype=bool).reshape(-1, len(LEADS))
    usable = {lead: int(n) for lead, n in zip(LEADS, masks.sum(axis=0))}
    per_record = _counts(frame["n_leads_usable"])
    data = {"records": len(frame), "usable": usable, "usable_leads_per_record": per_record}
    facts = [(f"{lead} usable", f"{n} of {len(frame)}") for lead, n in usable.items()]
    facts += [(f"records with {k} usable leads", str(v)) for k, v in per_record.items()]
    png = _bars("Records where the lead is usable", list(LEADS), list(usable.values()))
    return Section("Leads present", data, facts, {"leads-present.png": png})


def age_and_sex(frame: pd.DataFrame, cfg: DataCardConfig) -> Section:
    ages = frame["age"].dropna().to_numpy(float)
    step = cfg.age_bin_years
    top = step * (int(ages.max() // step) + 1) if ages.size else step   # whole bins from 0
    edges, counts = _histogram(ages, np.arange(0, top + step, step))
    sex = frame["sex"].where(frame["sex"].notna() & (frame["sex"] != ""), "unknown")
    sexes = {str(k): int(v) for k, v in sex.value_counts().items()}
    order = [s for s in ("F", "M") if s in sexes] + \
        sorted(s for s in sexes if s not in ("F", "M", "unknown")) + \
        (["unknown"] if "unknown" in sexes else [])
    sexes = {s: sexes[s] for s in order}
    data = {"age": {"known": int(ages.size), "unknown": len(frame) - int(ages.size),
                    **_stats(ages), "histogram": {"edges": edges, "counts": counts}},
            "sex": sexes}
    facts = [("age known", str(ages.size)), ("age unknown", str(len(frame) - ages.size))]
    facts += [(f"age {k} (years)", "-" if v is None else _num(v))
              for k, v in _stats(ages).items()]
    facts += [(f"sex {k}", str(v)) for k, v in sexes.items()]
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [3, 1]})
    if counts:
        a1.stairs(counts, edges, fill=True)
    a1.set_title("Age")
    a1.set_xlabel("years")
    a1.set_ylabel("records")
    a2.bar(list(sexes), list(sexes.values()))
    a2.set_title("Sex")
    return Section("Age and sex", data, facts, {"age-and-sex.png": _png(fig)})


def _label_values(value: Any) -> list[str]:
    """What one record's label counts as: a list's elements, a dict's keys (PTB-XL's
    scp_codes {code: likelihood}), a scalar itself; each once per record."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = list(value)
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    out = {_short(v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for v in items}
    return sorted(out)


def labels(frame: pd.DataFrame, cfg: DataCardConfig) -> Section:
    per_key: dict[str, Counter] = {}
    records: Counter = Counter()
    for text in frame["labels"]:
        for key, value in (json.loads(text) if text else {}).items():
            records[key] += 1
            per_key.setdefault(key, Counter()).update(_label_values(value))
    shown = sorted(records, key=lambda k: (-records[k], k))[:cfg.label_keys]
    keys = {k: {"records": records[k], "distinct": len(per_key[k]),
                "top": [[v, n] for v, n in sorted(per_key[k].items(),
                                                  key=lambda x: (-x[1], x[0]))[:cfg.label_values]]}
            for k in shown}
    data = {"keys_total": len(records), "keys_shown": len(shown), "keys": keys}
    facts = [("label keys", f"{len(records)} ({len(shown)} shown)")]
    for k, d in keys.items():
        facts.append((f"{_short(k)}: records with it", f"{d['records']} ({d['distinct']} "
                                                        f"distinct values)"))
        facts += [(f"{_short(k)} = {v}", str(n)) for v, n in d["top"]]
    plt = _plt()
    plotted = shown[:4]
    fig, axes = plt.subplots(max(1, len(plotted)), 1, squeeze=False,
                             figsize=(8, 1 + sum(0.3 * len(keys[k]["top"]) + 0.6
                                                 for k in plotted) if plotted else 2.5))
    for ax, k in zip(axes[:, 0], plotted):
        top = keys[k]["top"]
        ax.barh(range(len(top)), [n for _, n in top])
        ax.set_yticks(range(len(top)), [_short(v, 45) for v, _ in top], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(_short(k, 60), fontsize=9)
    if not plotted:
        axes[0, 0].text(0.5, 0.5, "no labels", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    return Section("Labels", data, facts, {"labels.png": _png(fig)})


def quarantine(dataset: Dataset) -> Section:
    table = read_quarantine(dataset.store)
    reasons = Counter(table.column("reason").to_pylist())
    by_reason = dict(sorted(reasons.items(), key=lambda x: (-x[1], x[0])))
    stored = dataset.manifest.num_rows
    data = {"quarantined": table.num_rows, "by_reason": by_reason,
            "records_in": stored + table.num_rows}
    facts = [("records in", str(stored + table.num_rows)), ("stored", str(stored)),
             ("quarantined", str(table.num_rows))]
    facts += [(f"reason {k}", str(v)) for k, v in by_reason.items()]
    png = _bars("Quarantined records by reason", list(by_reason), list(by_reason.values()),
                horizontal=True)
    return Section("Quarantine", data, facts, {"quarantine.png": png})


def _example_figure(rec: dict[str, Any], seconds: float) -> tuple[bytes, list[str], dict]:
    signal, mask = rec["signal"], rec["lead_mask"]
    fs = float(rec["meta"]["fs"])
    n = min(signal.shape[1], int(round(seconds * fs)))
    leads = [i for i in range(len(LEADS)) if mask[i]]
    plt = _plt()
    fig, axes = plt.subplots(max(1, len(leads)), 1, sharex=True, squeeze=False,
                             figsize=(10, 0.8 * max(1, len(leads)) + 0.8))
    t = np.arange(n) / fs
    for ax, i in zip(axes[:, 0], leads):
        ax.plot(t, signal[i, :n], linewidth=0.6)
        ax.set_ylabel(f"{LEADS[i]}\nmV", fontsize=7, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("seconds")
    axes[0, 0].set_title(f"{_short(rec['key'], 60)} (usable leads)", fontsize=9)
    ranges = {LEADS[i]: [float(signal[i, :n].min()), float(signal[i, :n].max())]
              for i in leads} if n else {}
    return _png(fig), [LEADS[i] for i in leads], ranges


def example_ecgs(dataset: Dataset, cfg: DataCardConfig) -> Section:
    """The first records of the first shards by name, read back and verified (shard and record
    SHA-256): at most a shard or two fetched, even on S3 with 256 MB shards."""
    examples, figures = [], {}
    for name, info in sorted(dataset.shards.items()):
        if len(examples) >= cfg.examples:
            break
        records = read_shard(dataset.store, info, verify_shard=True, verify_records=True)
        try:
            for rec in records:
                if len(examples) >= cfg.examples:
                    break
                png, leads, ranges = _example_figure(rec, cfg.example_seconds)
                file = f"example-ecgs-{len(examples) + 1}-{slug(rec['key'])}.png"
                figures[file] = png
                examples.append({
                    "key": rec["key"], "split": rec["split"], "shard": name,
                    "sha256": rec["meta"]["sha256"], "fs": float(rec["meta"]["fs"]),
                    "seconds_plotted": min(cfg.example_seconds,
                                           rec["signal"].shape[1] / float(rec["meta"]["fs"])),
                    "leads_plotted": leads, "mv_range": ranges, "figure": file})
        finally:
            records.close()
    facts = [(f"example {i + 1}", f"{e['key']} ({e['split']}, {len(e['leads_plotted'])} "
                                  f"usable leads, first {e['seconds_plotted']:g} s)")
             for i, e in enumerate(examples)]
    return Section("Example ECGs", {"examples": examples}, facts or [("examples", "none")],
                   figures)


# ---------------------------------------------------------------------------- the card

def build_card(dataset: Dataset, cfg: DataCardConfig | None = None
               ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(card.json's content, file name -> PNG) of a committed dataset."""
    cfg = cfg or DataCardConfig()
    frame = dataset.frame()
    sections = [records_and_windows(frame, len(dataset.shards)), patients(frame),
                durations(frame, cfg), sampling_rates(frame), leads_present(frame),
                age_and_sex(frame, cfg), labels(frame, cfg), quarantine(dataset),
                example_ecgs(dataset, cfg)]
    assert tuple(s.title for s in sections) == SECTIONS
    card = {"card_version": CARD_VERSION, "dataset": dataset.url,
            "dataset_digest": dataset.digest,
            "corpora": sorted(set(frame["corpus"])), "config": asdict(cfg),
            "sections": {s.title: s.to_json() for s in sections}}
    return card, {f: png for s in sections for f, png in s.figures.items()}


def render_html(card: dict[str, Any]) -> str:
    """The page, from card.json alone; every string from data escaped."""
    e = html.escape
    parts = []
    for title in SECTIONS:
        sec = card["sections"][title]
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in sec["facts"])
        imgs = "".join(f'<figure><img src="{e(f)}" alt="{e(title)}"></figure>'
                       for f in sec["figures"])
        parts.append(f'<section id="{slug(title)}"><h2>{e(title)}</h2>'
                     f"<table>{rows}</table>{imgs}</section>")
    toc = "".join(f'<li><a href="#{slug(t)}">{e(t)}</a></li>' for t in SECTIONS)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Data card: {e(card["dataset"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} th{{text-align:left;
font-weight:normal;padding-right:2em}} td{{font-variant-numeric:tabular-nums}}
figure{{display:inline-block;margin:1em 0}} img{{max-width:100%}}</style></head>
<body><h1>Data card</h1>
<p id="dataset">{e(card["dataset"])}: corpora {e(", ".join(card["corpora"]) or "-")},
dataset digest <code>{e(card["dataset_digest"])}</code></p>
<ul>{toc}</ul>
{"".join(parts)}
{IMAGES_OK_SCRIPT}
</body></html>
"""


def write_data_card(dataset_url: str, cfg: DataCardConfig | None = None) -> str:
    """Render the card of the committed dataset at `dataset_url` beside its manifest;
    returns index.html's URL. Figures first, the page last."""
    dataset = open_dataset(dataset_url)
    card, figures = build_card(dataset, cfg)
    store = dataset.store
    for name, png in figures.items():
        store.put_bytes(f"{DATACARD_PREFIX}{name}", png)
    store.put_bytes(CARD_KEY, json.dumps(card, indent=1, sort_keys=False).encode())
    store.put_bytes(INDEX_KEY, render_html(card).encode())
    url = store.full_url(INDEX_KEY)
    log.info("data card of %s: %s", dataset.url, url)
    return url


def read_data_card(dataset_url: str) -> dict[str, Any]:
    """card.json of the dataset at `dataset_url`."""
    from clef_platform.storage import open_store

    store = open_store(dataset_url)
    if not store.exists(CARD_KEY):
        raise DatasetError(f"{store.full_url(CARD_KEY)} not found: no data card (render it "
                           f"with jobs/datacard.py --data {dataset_url})")
    card = json.loads(store.get_bytes(CARD_KEY))
    if card.get("card_version") != CARD_VERSION:
        raise DatasetError(f"{store.full_url(CARD_KEY)}: data card version "
                           f"{card.get('card_version')}, this platform reads {CARD_VERSION}; "
                           f"render it again with jobs/datacard.py --data {dataset_url}")
    return card
