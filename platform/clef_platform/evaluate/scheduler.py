"""The evaluation scheduler: every export of a run with no results yet gets every task.

One pass (`evaluate_pass`):
1. list the run's complete exports (`<run>/exports/step_<N>/_COMPLETE`, the training job's
   commit marker) and add the baselines: a seeded random encoder of each exported scale and any
   released CLEF checkpoints given;
2. for each (model, task) whose key (checkpoint, task, config hash) is not in the results store,
   embed the task's dataset once per model (Ray Data) and fit the probe; each result is stored
   as soon as it exists;
3. a failing task is logged and retried `retries` times, then left without a result (so the
   next pass tries again) while the other tasks go on;
4. Prometheus gauges are updated and the HTML report is rendered.

`watch` repeats passes every `interval` seconds, so exports written later are picked up.

Leakage: the records a checkpoint was pretrained on are excluded from every probe of the run,
baselines included (so all rows of a run are scored on the same records). Their sha256 come from
`pretrain_manifest` (a table with a sha256 column, e.g. the training dataset's manifest.parquet,
optionally filtered to `pretrain_split`) and from any `pretrain_manifest` (URL) or `data` +
`split` an export's `_COMPLETE` marker names. The set's digest is part of the config hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from clef_platform.evaluate.data import (dataset_exists, join_url, open_dataset, read_table)
from clef_platform.evaluate.embed import EMBED_VERSION, ModelSpec, export_scale, extract
from clef_platform.evaluate.probes import ProbeConfig, run_probe
from clef_platform.evaluate.store import ResultRow, ResultsStore, dumps
from clef_platform.evaluate.tasks import TaskSpec, compute_labels
from clef_platform.storage import open_store

log = logging.getLogger(__name__)

MARKER = "_COMPLETE"
_EXPORT = re.compile(r"^exports/step_(\d+)/" + MARKER + "$")


@dataclass
class EvalConfig:
    run_url: str
    tasks: list[TaskSpec]
    data_root: str
    results_url: str | None = None          # default <run>/eval/results.parquet
    report_url: str | None = None           # default <run>/eval/report
    pretrain_manifest: str | None = None
    pretrain_split: str | None = None
    released: list[tuple[str, str]] = field(default_factory=list)   # (path, scale)
    random_baseline: bool = True
    random_seed: int = 0
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    retries: int = 1
    retry_delay_s: float = 1.0
    actors: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        self.run_url = str(self.run_url).rstrip("/")
        self.results_url = self.results_url or f"{self.run_url}/eval/results.parquet"
        self.report_url = self.report_url or f"{self.run_url}/eval/report"


@dataclass
class PassSummary:
    exports: int = 0
    added: int = 0
    already: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (checkpoint, task, error)
    missing_datasets: list[str] = field(default_factory=list)
    report: str | None = None
    seconds: float = 0.0


# ------------------------------------------------------------------------------- discovery

def list_exports(run_url: str) -> list[ModelSpec]:
    """The run's complete exports, by step (the marker is written last by the training job)."""
    store = open_store(run_url)
    out = []
    for key in store.list("exports/"):
        m = _EXPORT.match(key)
        if not m:
            continue
        step = int(m.group(1))
        loc = f"{run_url.rstrip('/')}/exports/step_{step}"
        try:
            scale = export_scale(loc)
        except Exception as e:          # a broken export must not stop the others
            log.error("export %s unreadable (%s); skipping it", loc, e)
            continue
        out.append(ModelSpec("export", scale=scale, location=loc, step=step))
    return sorted(out, key=lambda s: s.step)


def _marker(run_url: str, step: int) -> dict:
    try:
        return json.loads(open_store(run_url).get_bytes(f"exports/step_{step}/{MARKER}") or b"{}")
    except (ValueError, FileNotFoundError):
        return {}


def pretraining_exclusion(cfg: EvalConfig, exports: list[ModelSpec]
                          ) -> tuple[frozenset[str], list[str]]:
    """sha256 of every record the run's checkpoints trained on, and where they came from."""
    hashes: set[str] = set()
    sources = []

    def add(url: str, split: str | None) -> None:
        df = read_table(url)
        if "sha256" not in df.columns:
            raise ValueError(f"pretraining manifest {url} has no sha256 column")
        if split and "split" in df.columns:
            df = df[df["split"] == split]
        hashes.update(str(s) for s in df["sha256"].dropna())
        sources.append(f"{url}" + (f" (split {split})" if split else ""))

    if cfg.pretrain_manifest:
        add(cfg.pretrain_manifest, cfg.pretrain_split)
    for e in exports:
        info = _marker(cfg.run_url, e.step)
        if info.get("pretrain_manifest"):
            add(info["pretrain_manifest"], info.get("split"))
        elif info.get("data"):
            add(join_url(info["data"], "manifest.parquet"), info.get("split"))
    return frozenset(hashes), sorted(set(sources))


def _digest(hashes: frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]


def config_hash(cfg: EvalConfig, task: TaskSpec, exclusion_digest: str) -> str:
    return cfg.probe.hash(task, f"{EMBED_VERSION};exclude={exclusion_digest}")


def baselines(cfg: EvalConfig, exports: list[ModelSpec]) -> list[ModelSpec]:
    out = []
    if cfg.random_baseline:
        for scale in sorted({e.scale for e in exports if e.scale}):
            out.append(ModelSpec("random", scale=scale, seed=cfg.random_seed))
    for path, scale in cfg.released:
        out.append(ModelSpec("released", scale=scale, location=str(path)))
    return out


# ------------------------------------------------------------------------------------ a pass

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


def evaluate_pass(cfg: EvalConfig, metrics=None, render: bool = True) -> PassSummary:
    t0 = time.perf_counter()
    summary = PassSummary()
    exports = list_exports(cfg.run_url)
    summary.exports = len(exports)
    if not exports:
        log.info("%s: no complete exports yet", cfg.run_url)
        summary.seconds = time.perf_counter() - t0
        return summary
    exclude, sources = pretraining_exclusion(cfg, exports)
    if not sources:
        log.warning("no pretraining manifest known for %s: nothing is excluded for leakage "
                    "(pass --pretrain-manifest)", cfg.run_url)
    excl_digest = _digest(exclude)
    results = ResultsStore(cfg.results_url)
    have = results.keys()

    tasks = []
    for t in cfg.tasks:
        url = join_url(cfg.data_root, t.dataset)
        if dataset_exists(url):
            tasks.append((t, url, config_hash(cfg, t, excl_digest)))
        else:
            summary.missing_datasets.append(t.name)
            log.info("task %s: dataset %s not ingested; skipped", t.name, url)

    for model in exports + baselines(cfg, exports):
        groups: dict[tuple[str, int, int], list] = defaultdict(list)
        for t, url, h in tasks:
            if (model.checkpoint_id, t.name, h) in have:
                summary.already += 1
            else:
                groups[(url, t.lead_index, t.window)].append((t, h))
        for (url, lead, window), group in groups.items():
            try:
                emb = _attempt(
                    f"embedding {url} with {model.checkpoint_id}",
                    lambda: extract(open_dataset(url), model, lead, window, exclude,
                                    actors=cfg.actors, batch_size=cfg.batch_size),
                    cfg.retries, cfg.retry_delay_s)
            except Exception as e:
                for t, _ in group:
                    summary.failed.append((model.checkpoint_id, t.name, repr(e)))
                    if metrics:
                        metrics.failed(t.name)
                continue
            for t, h in group:
                try:
                    row = _attempt(f"task {t.name} on {model.checkpoint_id}",
                                   lambda: _probe_row(cfg, model, t, h, url, emb, sources),
                                   cfg.retries, cfg.retry_delay_s)
                except Exception as e:
                    summary.failed.append((model.checkpoint_id, t.name,
                                           "".join(traceback.format_exception_only(e)).strip()))
                    if metrics:
                        metrics.failed(t.name)
                    continue
                summary.added += results.add([row])
                have.add((model.checkpoint_id, t.name, h))
                log.info("%s %s step %s: %s %.4f [%.4f, %.4f] (%s)", t.name, model.kind,
                         model.step, row.metric, row.value, row.lower, row.upper, row.status)

    df = results.read()
    if metrics:
        metrics.update(df)
    if render:
        from clef_platform.evaluate.report import render_report

        try:
            summary.report = render_report(df, cfg.report_url, cfg.tasks, cfg.run_url,
                                           missing=summary.missing_datasets)
        except Exception:
            log.exception("report rendering failed")
    summary.seconds = time.perf_counter() - t0
    log.info("pass over %s: %d exports, %d results added, %d already stored, %d failed, "
             "%.1fs", cfg.run_url, summary.exports, summary.added, summary.already,
             len(summary.failed), summary.seconds)
    return summary


def _probe_row(cfg: EvalConfig, model: ModelSpec, task: TaskSpec, h: str, url: str, emb,
               sources: list[str]) -> ResultRow:
    t0 = time.perf_counter()
    labels = compute_labels(task, emb.records)
    base = dict(checkpoint=model.checkpoint_id, kind=model.kind, run=cfg.run_url,
                step=-1 if model.step is None else int(model.step), task=task.name,
                config_hash=h, metric=task.metric, dataset=url,
                n_excluded_leakage=emb.n_excluded, skipped=dumps(labels.skipped))
    if not labels.classes and task.label.kind != "regression" or \
            task.label.kind == "regression" and labels.skipped:
        log.warning("task %s: nothing reaches the minimum (%s); skipped", task.name,
                    labels.skipped)
        return ResultRow(**base, status="skipped", value=float("nan"), lower=float("nan"),
                         upper=float("nan"), n_records=int(labels.has_label.sum()), n_test=0)
    res = run_probe(task, labels, emb.X, emb.records, emb.patient_ids, cfg.probe)
    detail = {"chosen": res.chosen, "n_train": res.n_train, "embed_s": round(emb.seconds, 2),
              "probe_s": round(time.perf_counter() - t0, 2), "leakage_sources": sources,
              "counts": labels.counts}
    return ResultRow(**base, status="ok", value=res.value, lower=res.lower, upper=res.upper,
                     n_records=res.n_records, n_test=res.n_test, classes=dumps(res.classes),
                     per_class=dumps(res.per_class), detail=dumps(detail))


def watch(cfg: EvalConfig, interval: float, metrics=None, max_passes: int | None = None,
          stop: threading.Event | None = None) -> list[PassSummary]:
    """Pass after pass every `interval` seconds; a pass that raises is logged, never fatal."""
    stop = stop or threading.Event()
    done: list[PassSummary] = []
    while not stop.is_set():
        try:
            done.append(evaluate_pass(cfg, metrics))
        except Exception:
            log.exception("evaluation pass over %s failed; next in %.0fs", cfg.run_url, interval)
            done.append(PassSummary(failed=[("*", "*", "pass failed")]))
        if max_passes is not None and len(done) >= max_passes:
            break
        stop.wait(interval)
    return done


# ----------------------------------------------------------------------------------- metrics

def baseline_name(checkpoint: str) -> str:
    """A short label for a baseline: random:small:seed0, released:medium:<file name>."""
    if checkpoint.startswith("released:"):
        _, scale, path = checkpoint.split(":", 2)
        return f"released:{scale}:{path.rstrip('/').rsplit('/', 1)[-1]}"
    return checkpoint


class EvalMetrics:
    """Prometheus gauges of the latest figures per task (labels: task, metric; never ids)."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.value = Gauge("clef_eval_metric", "Latest export's probe metric per task",
                           ["task", "metric"], registry=r)
        self.lower = Gauge("clef_eval_metric_lower", "Lower end of its 95% bootstrap interval",
                           ["task", "metric"], registry=r)
        self.upper = Gauge("clef_eval_metric_upper", "Upper end of its 95% bootstrap interval",
                           ["task", "metric"], registry=r)
        self.step = Gauge("clef_eval_latest_step", "Training step of the latest evaluated export",
                          ["task"], registry=r)
        self.baseline = Gauge("clef_eval_baseline_metric", "Baseline probe metric per task",
                              ["task", "metric", "baseline"], registry=r)
        self.failures = Counter("clef_eval_task_failures", "Task evaluations that failed "
                                "after retries", ["task"], registry=r)
        self.last_pass = Gauge("clef_eval_last_pass_timestamp_seconds",
                               "Unix time the last pass finished", registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1"):
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.registry)

    def failed(self, task: str) -> None:
        self.failures.labels(task).inc()

    def update(self, df) -> None:
        ok = df[df["status"] == "ok"]
        for task, g in ok[ok["kind"] == "export"].groupby("task"):
            latest = g.sort_values(["step", "created_at"]).iloc[-1]
            self.value.labels(task, latest["metric"]).set(latest["value"])
            self.lower.labels(task, latest["metric"]).set(latest["lower"])
            self.upper.labels(task, latest["metric"]).set(latest["upper"])
            self.step.labels(task).set(int(latest["step"]))
        for (task, ckpt), g in ok[ok["kind"] != "export"].groupby(["task", "checkpoint"]):
            row = g.sort_values("created_at").iloc[-1]
            name = baseline_name(ckpt)
            self.baseline.labels(task, row["metric"], name).set(row["value"])
        self.last_pass.set(time.time())
