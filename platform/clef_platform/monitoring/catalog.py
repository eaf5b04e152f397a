"""The metric catalog: every platform metric defined once (name, kind, help, labels).

The Ray sink, the prometheus_client fallback, the dashboards and the alert rules all read
names from here, so a renamed metric cannot leave a panel querying nothing. Labels come from a
closed set: a patient or record id in a label would both leak identities and give Prometheus
one series per record, so `check_catalog` refuses any label outside ALLOWED_LABELS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The only label names a platform metric may carry (none can hold a patient or record id).
ALLOWED_LABELS = frozenset({"run", "rank", "node", "corpus", "task", "outcome", "reason",
                            "kind", "split", "metric"})
KINDS = ("counter", "gauge", "histogram")
# Step and data-wait times: CPU test steps take ~0.1-2 s, GPU steps of large ~1-10 s.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_NAME = re.compile(r"^clef_[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


def _c(name, help, *labels):
    return MetricSpec(name, "counter", help, labels)


def _g(name, help, *labels):
    return MetricSpec(name, "gauge", help, labels)


def _h(name, help, *labels):
    return MetricSpec(name, "histogram", help, labels, SECONDS_BUCKETS)


CATALOG: tuple[MetricSpec, ...] = (
    # training (every rank; rate() over any window gives samples/s, steps/s)
    _c("clef_train_samples_total", "Records trained on (each record counted once per step)",
       "run", "rank"),
    _c("clef_train_views_total", "Views encoded (records x views per record)", "run", "rank"),
    _c("clef_train_steps_total", "Optimiser steps completed", "run", "rank"),
    _c("clef_train_flops_total", "Model training FLOP done (3 x forward, clef_model.flops)",
       "run", "rank"),
    _h("clef_train_step_seconds", "Wall time of an optimiser step", "run", "rank"),
    _h("clef_train_data_wait_seconds", "Time a step waited for its batches", "run", "rank"),
    _g("clef_train_loss", "Loss of the last step (global batch)", "run", "rank"),
    # A flag, not the loss: Ray's metrics pipeline drops NaN and +-Inf gauge values (measured on
    # Ray 2.60), so a non-finite loss would never reach Prometheus as clef_train_loss.
    _g("clef_train_loss_nonfinite", "1 when this rank's loss was not finite in the last step, "
       "else 0", "run", "rank"),
    _g("clef_train_learning_rate", "Learning rate of the last step", "run", "rank"),
    _g("clef_train_grad_norm", "Global gradient norm before clipping", "run", "rank"),
    _g("clef_train_model_flops_utilisation",
       "Achieved training FLOP/s over the configured peak FLOP/s of one worker", "run", "rank"),
    _g("clef_train_gpu_memory_bytes", "GPU memory (kind=allocated|peak)", "run", "rank", "kind"),
    _g("clef_train_last_checkpoint_step", "Step of the last checkpoint", "run", "rank"),
    _g("clef_train_last_step_timestamp_seconds", "Unix time of the last completed step",
       "run", "rank"),
    # ingest (shard tasks)
    _c("clef_ingest_records_total", "Records ingested, by outcome (stored|quarantined)",
       "corpus", "outcome"),
    _c("clef_ingest_bytes_total", "Shard bytes written", "corpus"),
    _c("clef_ingest_quarantined_total", "Records quarantined, by reason code", "corpus", "reason"),
    _c("clef_ingest_shards_total", "Shards completed, by outcome (written|skipped)",
       "corpus", "outcome"),
    # evaluation
    _c("clef_eval_results_total", "Probe results written", "run", "task"),
    _c("clef_eval_pass_failures_total", "Evaluation passes that failed", "run"),
    _g("clef_eval_metric", "Latest probe metric of a task", "run", "task", "metric"),
    _g("clef_eval_export_step", "Export step of the latest probe result", "run", "task"),
)

BY_NAME = {m.name: m for m in CATALOG}


def check_catalog(catalog: tuple[MetricSpec, ...] = CATALOG) -> None:
    """Raise ValueError naming the first metric that breaks the naming or label rules."""
    seen = set()
    for m in catalog:
        if m.name in seen:
            raise ValueError(f"metric {m.name}: defined twice")
        seen.add(m.name)
        if not _NAME.match(m.name):
            raise ValueError(f"metric {m.name}: name must match {_NAME.pattern}")
        if m.kind not in KINDS:
            raise ValueError(f"metric {m.name}: kind {m.kind!r} not one of {KINDS}")
        if (m.kind == "counter") != m.name.endswith("_total"):
            raise ValueError(f"metric {m.name}: counters, and only counters, end in _total")
        if m.kind == "histogram" and not m.buckets:
            raise ValueError(f"metric {m.name}: a histogram needs buckets")
        bad = [lab for lab in m.labels if lab not in ALLOWED_LABELS]
        if bad:
            raise ValueError(f"metric {m.name}: label(s) {bad} not allowed "
                             f"(allowed: {sorted(ALLOWED_LABELS)})")


def build_registry(catalog: tuple[MetricSpec, ...] = CATALOG
                   ) -> tuple[CollectorRegistry, dict[str, object]]:
    """A prometheus_client registry with the catalog's metrics, for jobs that run outside Ray.

    prometheus_client appends `_total` to counters itself, so the counter is created under the
    name without it: the exposed series name is the catalog's.
    """
    check_catalog(catalog)
    registry, metrics = CollectorRegistry(), {}
    for m in catalog:
        if m.kind == "counter":
            metrics[m.name] = Counter(m.name.removesuffix("_total"), m.help, m.labels,
                                      registry=registry)
        elif m.kind == "gauge":
            metrics[m.name] = Gauge(m.name, m.help, m.labels, registry=registry)
        else:
            metrics[m.name] = Histogram(m.name, m.help, m.labels, buckets=m.buckets,
                                        registry=registry)
    return registry, metrics
