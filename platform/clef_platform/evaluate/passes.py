"""One evaluation pass over a run: every (model, task) with no stored result gets scored.

1. discover the run's committed exports through their markers (`discovery`), compute the run's
   leakage exclusion from their lineage (`leakage`; an export whose training dataset changed is
   refused) and add the baselines;
2. open each task's dataset (`layout.dataset.open_dataset`); a result's key is (model identity,
   task, probe config hash, dataset digest, protocol, exclusion digest) (`layout.results`);
3. for each key not stored, embed the dataset once per model (Ray Data, verified shard reads) and
   fit the probe (`--protocol fine-tune`: read the windows once per dataset and lead and
   fine-tune the encoder with a linear head through Ray Train, `finetune`); each result is stored as soon as it exists, created only if absent, so
   evaluators racing on the same run store every result exactly once;
4. a failing task (a damaged shard included) is logged and retried `retries` times, then left
   without a result (the next pass tries again) while the other tasks go on;
5. Prometheus gauges are updated and the HTML report is rendered.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from clef_platform.evaluate.data import join_url
from clef_platform.evaluate.discovery import baselines, discover_exports
from clef_platform.evaluate.embed import (EMBED_VERSION, Embeddings, ModelSpec, Windows,
                                          extract, read_windows)
from clef_platform.evaluate.finetune import FINE_TUNE, FineTuneConfig, run_finetune
from clef_platform.evaluate.leakage import Exclusion, run_exclusion
from clef_platform.evaluate.probes import ProbeConfig, run_probe
from clef_platform.evaluate.tasks import TaskSpec, compute_labels
from clef_platform.layout.dataset import Dataset, dataset_exists, open_dataset
from clef_platform.layout.errors import DatasetError, ExportError
from clef_platform.layout.export import fetch_export
from clef_platform.layout.results import (PROTOCOL, PROTOCOLS, ResultKey, ResultRow,
                                          ResultsStore, results_url)

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    run_url: str
    tasks: list[TaskSpec]
    data_root: str
    results_url: str | None = None          # default <run>/eval/results
    report_url: str | None = None           # default <run>/eval/report
    pretrain_manifest: str | None = None    # adds to the exports' lineage
    pretrain_split: str | None = None
    allow_no_lineage: bool = False          # score exports without lineage, released checkpoints
    released: list[tuple[str, str]] = field(default_factory=list)   # (path, scale)
    random_baseline: bool = True
    random_seed: int = 0
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    verify_records: bool = True             # each record's signal SHA-256 (shards: always)
    retries: int = 1
    retry_delay_s: float = 1.0
    actors: int | None = None
    batch_size: int = 32
    protocol: str = PROTOCOL                # linear-probe | fine-tune
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol {self.protocol!r}: expected one of "
                             f"{', '.join(PROTOCOLS)}")
        self.run_url = str(self.run_url).rstrip("/")
        self.results_url = self.results_url or results_url(self.run_url)
        self.report_url = self.report_url or f"{self.run_url}/eval/report"


@dataclass
class PassSummary:
    exports: int = 0
    added: int = 0
    already: int = 0          # stored before this pass looked, or by a concurrent evaluator
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (checkpoint, task, error)
    refused: dict[str, str] = field(default_factory=dict)   # export URL -> why not scored
    no_lineage: list[str] = field(default_factory=list)     # skipped: no lineage, no flag
    missing_datasets: list[str] = field(default_factory=list)
    report: str | None = None
    seconds: float = 0.0


def _dumps(o) -> str:
    # NaN allowed: a class AUROC is NaN when a test part holds one class (inside a JSON string)
    return json.dumps(o, sort_keys=True, default=str)


def config_hash(cfg: EvalConfig, task: TaskSpec) -> str:
    if cfg.protocol == FINE_TUNE:
        return cfg.finetune.hash(task, EMBED_VERSION, cfg.probe)
    return cfg.probe.hash(task, EMBED_VERSION)


def _attempt(what: str, fn, retries: int, delay: float):
    """fn() with `retries` more tries after a failure; re-raises the last error."""
    for i in range(retries + 1):
        try:
            return fn()
        except Exception:
            log.exception("%s failed (attempt %d/%d)", what, i + 1, retries + 1)
            if i == retries:
                raise
            time.sleep(delay)


def _one_line(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(e)).strip().splitlines()[-1]


def evaluate_pass(cfg: EvalConfig, metrics=None, render: bool = True,
                  after_read: Callable[[], None] | None = None) -> PassSummary:
    """One pass. `after_read` is a test hook called after reading what is stored and before
    scoring anything (to force concurrent passes to race)."""
    t0 = time.perf_counter()
    summary = PassSummary()
    found = discover_exports(cfg.run_url, cfg.allow_no_lineage)
    run_ex = run_exclusion(found.markers, cfg.pretrain_manifest, cfg.pretrain_split)
    exports = [e for e in found.exports if e.location not in run_ex.refused]
    summary.exports = len(exports)
    summary.refused = {**found.refused, **run_ex.refused}
    summary.no_lineage = list(found.no_lineage)
    for url, why in summary.refused.items():
        summary.failed.append((url, "*", why))
    exclusion = run_ex.exclusion
    if not exclusion.sources:
        log.warning("%s: no lineage or pretraining manifest names any training record: "
                    "nothing is excluded for leakage", cfg.run_url)
    base, skipped = baselines({e.scale for e in exports}, cfg.released, cfg.random_baseline,
                              cfg.random_seed, cfg.allow_no_lineage)
    summary.no_lineage += skipped
    models = exports + base
    results = ResultsStore(cfg.results_url)
    windows: dict[tuple[str, int, int], Windows] = {}

    datasets: dict[str, Dataset] = {}
    tasks = []
    for t in cfg.tasks:
        url = join_url(cfg.data_root, t.dataset)
        if not dataset_exists(url):
            summary.missing_datasets.append(t.name)
            log.info("task %s: dataset %s not ingested; skipped", t.name, url)
            continue
        try:
            datasets.setdefault(url, open_dataset(url))
        except DatasetError as e:
            summary.failed.append(("*", t.name, str(e)))
            log.error("task %s: %s", t.name, e)
            continue
        tasks.append((t, url, config_hash(cfg, t)))

    have = results.keys()
    if after_read is not None:
        after_read()

    for model in models:
        groups: dict[tuple[str, int, int], list] = defaultdict(list)
        for t, url, h in tasks:
            key = ResultKey(model=model.identity, task=t.name, config_hash=h,
                            dataset_digest=datasets[url].digest,
                            exclusion_digest=exclusion.digest, protocol=cfg.protocol)
            if key.digest in have:
                summary.already += 1
            else:
                groups[(url, t.lead_index, t.window)].append((t, h))
        if groups and model.kind == "export":
            # Check the weights against the marker here, once: a damaged export is refused with
            # one line instead of failing inside every embedding actor.
            try:
                with tempfile.TemporaryDirectory(prefix="clef-verify-") as d:
                    fetch_export(str(model.location), Path(d))
            except ExportError as e:
                summary.refused[str(model.location)] = str(e)
                summary.failed.append((model.checkpoint_id, "*", str(e)))
                log.error("%s; not scored", e)
                continue
        for (url, lead, window), group in groups.items():
            ds = datasets[url]
            if cfg.protocol == FINE_TUNE:
                # The windows do not depend on the model: read once per dataset and lead.
                what, make = "reading", lambda: _windows(cfg, windows, ds, lead, window,
                                                        exclusion)
                score = _finetune_row
            else:
                what, make = "embedding", lambda: extract(
                    ds, model, lead, window, exclusion.hashes, actors=cfg.actors,
                    batch_size=cfg.batch_size, verify_records=cfg.verify_records)
                score = _probe_row
            try:
                data = _attempt(f"{what} {url} for {model.checkpoint_id}", make, cfg.retries,
                                cfg.retry_delay_s)
            except Exception as e:
                for t, _ in group:
                    summary.failed.append((model.checkpoint_id, t.name, _one_line(e)))
                    if metrics:
                        metrics.failed(t.name)
                continue
            for t, h in group:
                try:
                    row = _attempt(f"task {t.name} on {model.checkpoint_id}",
                                   lambda: score(cfg, model, t, h, ds, data, exclusion),
                                   cfg.retries, cfg.retry_delay_s)
                except Exception as e:
                    summary.failed.append((model.checkpoint_id, t.name, _one_line(e)))
                    if metrics:
                        metrics.failed(t.name)
                    continue
                if results.add(row):
                    summary.added += 1
                    if metrics:
                        metrics.result(t.name)
                    log.info("%s %s %s step %s: %s %.4f [%.4f, %.4f] (%s)", t.name,
                             row.protocol, model.kind, model.step, row.metric, row.value,
                             row.lower, row.upper, row.status)
                else:
                    summary.already += 1
                    log.info("%s on %s: stored meanwhile by another evaluator; kept that one",
                             t.name, model.checkpoint_id)

    df = results.read()
    if metrics:
        metrics.update(df)
        metrics.pass_done(bool(summary.failed))
    if render:
        from clef_platform.evaluate.report import render_report

        summary.report = render_report(df, cfg.report_url, cfg.tasks, cfg.run_url,
                                       missing=summary.missing_datasets,
                                       not_scored={**summary.refused,
                                                   **{u: "no lineage: leakage cannot be "
                                                         "checked (--allow-no-lineage)"
                                                      for u in summary.no_lineage}})
    summary.seconds = time.perf_counter() - t0
    log.info("pass over %s: %d exports, %d results added, %d already stored, %d failed, "
             "%.1fs", cfg.run_url, summary.exports, summary.added, summary.already,
             len(summary.failed), summary.seconds)
    return summary


def _windows(cfg: EvalConfig, cache: dict, ds: Dataset, lead: int, window: int,
             exclusion: Exclusion) -> Windows:
    k = (ds.url, lead, window)
    if k not in cache:
        cache[k] = read_windows(ds, lead, window, exclusion.hashes,
                                verify_records=cfg.verify_records)
    return cache[k]


def _row_base(cfg: EvalConfig, model: ModelSpec, task: TaskSpec, h: str, ds: Dataset,
              n_excluded: int, labels, exclusion: Exclusion) -> dict:
    return dict(checkpoint=model.checkpoint_id, kind=model.kind, run=cfg.run_url,
                step=-1 if model.step is None else int(model.step), task=task.name,
                config_hash=h, metric=task.metric, dataset=ds.url, dataset_digest=ds.digest,
                export_digest=model.digest, exclusion_digest=exclusion.digest,
                protocol=cfg.protocol, lead=task.lead,
                lineage=model.lineage, n_excluded_leakage=n_excluded,
                skipped=_dumps(labels.skipped))


def _skipped(task: TaskSpec, labels, base: dict) -> ResultRow | None:
    """The `skipped` row when no class (or too few regression labels) reaches the minimum."""
    if not labels.classes and task.label.kind != "regression" or \
            task.label.kind == "regression" and labels.skipped:
        log.warning("task %s: nothing reaches the minimum (%s); skipped", task.name,
                    labels.skipped)
        return ResultRow(**base, status="skipped", value=float("nan"), lower=float("nan"),
                         upper=float("nan"), n_records=int(labels.has_label.sum()), n_test=0)
    return None


def _finetune_row(cfg: EvalConfig, model: ModelSpec, task: TaskSpec, h: str, ds: Dataset,
                  win: Windows, exclusion: Exclusion) -> ResultRow:
    from clef_platform.evaluate.data import eval_views

    labels = compute_labels(task, win.records)
    base = _row_base(cfg, model, task, h, ds, win.n_excluded, labels, exclusion)
    skipped = _skipped(task, labels, base)
    if skipped is not None:
        return skipped
    res = run_finetune(cfg.finetune, model, task, labels, eval_views(win.X), win.records,
                       win.patient_ids, bootstrap=cfg.probe)
    detail = {"folds": res.folds, "device": res.device, "precision": res.precision,
              "workers": cfg.finetune.workers, "finetune_s": round(res.seconds, 2),
              "read_s": round(win.seconds, 2), "recipe": cfg.finetune.recipe(),
              "leakage_sources": list(exclusion.sources), "counts": labels.counts,
              "verify_records": cfg.verify_records}
    return ResultRow(**base, status="ok", value=res.value, lower=res.lower, upper=res.upper,
                     n_records=res.n_records, n_test=res.n_test, classes=_dumps(res.classes),
                     per_class=_dumps(res.per_class), detail=_dumps(detail))


def _probe_row(cfg: EvalConfig, model: ModelSpec, task: TaskSpec, h: str, ds: Dataset,
               emb: Embeddings, exclusion: Exclusion) -> ResultRow:
    t0 = time.perf_counter()
    labels = compute_labels(task, emb.records)
    base = _row_base(cfg, model, task, h, ds, emb.n_excluded, labels, exclusion)
    skipped = _skipped(task, labels, base)
    if skipped is not None:
        return skipped
    res = run_probe(task, labels, emb.X, emb.records, emb.patient_ids, cfg.probe)
    detail = {"chosen": res.chosen, "n_train": res.n_train, "embed_s": round(emb.seconds, 2),
              "probe_s": round(time.perf_counter() - t0, 2),
              "leakage_sources": list(exclusion.sources), "counts": labels.counts,
              "verify_records": cfg.verify_records}
    return ResultRow(**base, status="ok", value=res.value, lower=res.lower, upper=res.upper,
                     n_records=res.n_records, n_test=res.n_test, classes=_dumps(res.classes),
                     per_class=_dumps(res.per_class), detail=_dumps(detail))
