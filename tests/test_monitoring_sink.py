"""The metrics sink outside Ray: catalog names on a loopback endpoint, labels checked."""

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clef_platform.metrics import IngestMetrics
from clef_platform.monitoring.sink import PrometheusSink, Sink, SinkConfig, build_sink


def _scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_prometheus_sink_serves_catalog_names_on_loopback():
    sink = build_sink(SinkConfig("prometheus", port=0))
    try:
        assert isinstance(sink, PrometheusSink) and sink.server._server.server_address[0] == "127.0.0.1"
        lab = {"run": "r1", "rank": "0"}
        sink.inc("clef_train_samples_total", 16, **lab)
        sink.inc("clef_train_samples_total", 16, **lab)
        sink.set("clef_train_loss", 2.5, **lab)
        sink.observe("clef_train_step_seconds", 0.3, **lab)
        got = _scrape(sink.port)
        key = tuple(sorted(lab.items()))
        assert got[("clef_train_samples_total", key)] == 32
        assert got[("clef_train_loss", key)] == 2.5
        assert got[("clef_train_step_seconds_count", key)] == 1
        assert got[("clef_train_step_seconds_bucket", tuple(sorted({**lab, "le": "0.5"}.items())))] == 1
    finally:
        sink.close()


@pytest.mark.parametrize("call, message", [
    (lambda s: s.inc("clef_train_samples_total", 1, run="r", rank="0", record="ludb/1"),
     r"labels \['rank', 'record', 'run'\] given"),
    (lambda s: s.inc("clef_train_samples_total", 1, run="r"), r"the catalog's are \['rank', 'run'\]"),
    (lambda s: s.set("clef_train_samples_total", 1, run="r", rank="0"), "is a counter, not a gauge"),
    (lambda s: s.inc("clef_train_samples", 1), "not in monitoring.catalog"),
])
@pytest.mark.parametrize("backend", ["prometheus", "off"])
def test_bad_call_named(backend, call, message):
    sink = build_sink(SinkConfig(backend))
    with pytest.raises(ValueError, match=message):
        call(sink)


def test_unknown_backend_named():
    with pytest.raises(ValueError, match="metrics backend 'grafana'"):
        SinkConfig("grafana")
    assert type(build_sink(SinkConfig("off"))) is Sink


def test_ingest_counts_by_corpus_outcome_reason():
    m = IngestMetrics("ludb")
    sink = m.sink
    m.shard_done(7, {"flat_signal": 2, "nan_samples": 1}, 4096, skipped=False)
    m.shard_done(0, {}, 0, skipped=True)
    from prometheus_client import generate_latest
    text = generate_latest(sink.registry).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("clef_ingest_records_total", (("corpus", "ludb"), ("outcome", "stored")))] == 7
    assert got[("clef_ingest_records_total", (("corpus", "ludb"), ("outcome", "quarantined")))] == 3
    assert got[("clef_ingest_quarantined_total", (("corpus", "ludb"), ("reason", "flat_signal")))] == 2
    assert got[("clef_ingest_bytes_total", (("corpus", "ludb"),))] == 4096
    assert got[("clef_ingest_shards_total", (("corpus", "ludb"), ("outcome", "skipped")))] == 1
