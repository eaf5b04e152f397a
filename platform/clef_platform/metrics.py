"""Ingest counters (catalog names) and the loopback metrics server of platform jobs.

Each job gets its own registry (not the process-global one), so several jobs or tests in one
process never collide on metric names.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def record_shard(sink, corpus: str, stored: int, quarantined_by_reason: dict[str, int],
                 nbytes: int, skipped: bool) -> None:
    """One shard's figures into a monitoring sink (from the shard's Ray task, or the driver)."""
    if skipped:
        sink.inc("clef_ingest_shards_total", 1, corpus=corpus, outcome="skipped")
        return
    sink.inc("clef_ingest_shards_total", 1, corpus=corpus, outcome="written")
    sink.inc("clef_ingest_records_total", stored, corpus=corpus, outcome="stored")
    sink.inc("clef_ingest_bytes_total", nbytes, corpus=corpus)
    for reason, n in quarantined_by_reason.items():
        sink.inc("clef_ingest_records_total", n, corpus=corpus, outcome="quarantined")
        sink.inc("clef_ingest_quarantined_total", n, corpus=corpus, reason=reason)


class IngestMetrics:
    """The driver's count of an ingest in a prometheus_client registry (catalog names), for
    `jobs/ingest.py --metrics-port`; without it the shard tasks report through Ray instead."""

    def __init__(self, corpus: str = "") -> None:
        from clef_platform.monitoring.sink import PrometheusSink

        self.corpus = corpus
        self.sink = PrometheusSink()
        self.registry = self.sink.registry
        # Touch the label sets we always report, so a scrape shows them from the first second.
        for outcome in ("stored", "quarantined"):
            self.sink.inc("clef_ingest_records_total", 0, corpus=corpus, outcome=outcome)
        for outcome in ("written", "skipped"):
            self.sink.inc("clef_ingest_shards_total", 0, corpus=corpus, outcome=outcome)

    def shard_done(self, stored: int, quarantined_by_reason: dict[str, int], nbytes: int,
                   skipped: bool) -> None:
        record_shard(self.sink, self.corpus, stored, quarantined_by_reason, nbytes, skipped)


class MetricsServer:
    """`start_http_server` bound to `addr` or CLEF_BIND_ADDRESS (127.0.0.1 by default,
    `clef_platform.netbind`); stop() shuts it down (tests run many jobs)."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str | None = None) -> None:
        from clef_platform.netbind import bind_address

        addr = addr or bind_address()
        self._server: Any
        self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        self.port = self._server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", addr, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
