"""The metric catalog: naming and label rules, and the prometheus_client exposition."""

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clef_platform.monitoring.catalog import (ALLOWED_LABELS, CATALOG, MetricSpec,
                                              build_registry, check_catalog)


def test_catalog_is_valid_and_id_free():
    check_catalog()
    for m in CATALOG:
        assert not any(w in lab for lab in m.labels for w in ("patient", "record", "key")), m


@pytest.mark.parametrize("spec, message", [
    (MetricSpec("clef_x_total", "counter", "h", ("run", "patient_id")),
     r"label\(s\) \['patient_id'\]"),
    (MetricSpec("clef_x", "counter", "h", ("run",)), "only counters, end in _total"),
    (MetricSpec("clef_x_total", "summary", "h", ()), "kind 'summary' not one of"),
    (MetricSpec("clef_x_total", "gauge", "h", ()), "only counters, end in _total"),
    (MetricSpec("clef_x_seconds", "histogram", "h", ()), "needs buckets"),
    (MetricSpec("x_seconds", "gauge", "h", ()), "name must match"),
])
def test_bad_spec_named(spec, message):
    with pytest.raises(ValueError, match=message):
        check_catalog((spec,))


def test_registry_exposes_catalog_names():
    registry, metrics = build_registry()
    labels = {lab: "x" for lab in ALLOWED_LABELS}
    for m in CATALOG:
        metric = metrics[m.name].labels(**{lab: labels[lab] for lab in m.labels})
        if m.kind == "counter":
            metric.inc(3)
        elif m.kind == "gauge":
            metric.set(1.5)
        else:
            metric.observe(0.2)
    text = generate_latest(registry).decode()
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for m in CATALOG:
        expected = f"{m.name}_count" if m.kind == "histogram" else m.name
        assert expected in samples, m.name
    steps = [s for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "clef_train_steps_total"]
    assert steps[0].value == 3.0 and steps[0].labels == {"run": "x", "rank": "x"}
