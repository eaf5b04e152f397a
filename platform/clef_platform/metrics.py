"""Prometheus counters for platform jobs, served on loopback while a job runs.

Each job gets its own registry (not the process-global one), so several jobs or tests in one
process never collide on metric names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server

log = logging.getLogger(__name__)


@dataclass
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.records = Counter("clef_ingest_records", "Records processed (stored or quarantined)",
                               ["outcome"], registry=r)
        self.bytes = Counter("clef_ingest_bytes", "Shard bytes written to storage", registry=r)
        self.quarantined = Counter("clef_ingest_quarantined", "Records quarantined, by reason",
                                   ["reason"], registry=r)
        self.shards = Counter("clef_ingest_shards", "Shards completed", ["state"], registry=r)
        # Touch the label sets we always report, so a scrape shows them from the first second.
        self.records.labels("stored")
        self.records.labels("quarantined")
        self.shards.labels("written")
        self.shards.labels("skipped")

    def shard_done(self, stored: int, quarantined_by_reason: dict[str, int], nbytes: int,
                   skipped: bool) -> None:
        if skipped:
            self.shards.labels("skipped").inc()
            return
        self.shards.labels("written").inc()
        self.records.labels("stored").inc(stored)
        self.bytes.inc(nbytes)
        for reason, n in quarantined_by_reason.items():
            self.records.labels("quarantined").inc(n)
            self.quarantined.labels(reason).inc(n)


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
