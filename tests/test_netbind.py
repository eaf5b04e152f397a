"""CLEF_BIND_ADDRESS: the platform's servers bind to loopback unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest

from clef_platform.metrics import IngestMetrics, MetricsServer
from clef_platform.netbind import bind_address


def test_default_is_loopback_and_a_server_listens_there(monkeypatch):
    monkeypatch.delenv("CLEF_BIND_ADDRESS", raising=False)
    assert bind_address() == "127.0.0.1"
    monkeypatch.setenv("CLEF_BIND_ADDRESS", "loopback")
    assert bind_address() == "127.0.0.1"
    server = MetricsServer(IngestMetrics().registry, 0)
    try:
        assert server._server.server_address[0] == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
        assert b"clef_ingest_records" in body
    finally:
        server.stop()


def _bind_address_in_fresh_process(**env: str) -> subprocess.CompletedProcess:
    """bind_address() in a new Python outside any Ray (this test process may hold a Ray
    session started by an earlier test, which would answer with its node address)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CLEF_BIND_ADDRESS")}
    return subprocess.run(
        [sys.executable, "-c", "from clef_platform.netbind import bind_address; print(bind_address())"],
        env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_explicit_address_and_cluster_address(monkeypatch):
    monkeypatch.setenv("CLEF_BIND_ADDRESS", "127.0.0.2")
    assert bind_address() == "127.0.0.2"
    # outside Ray, "cluster" is this host's address on the route to the head in RAY_ADDRESS
    done = _bind_address_in_fresh_process(CLEF_BIND_ADDRESS="cluster",
                                          RAY_ADDRESS="http://127.0.0.1:8265")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "127.0.0.1"
    done = _bind_address_in_fresh_process(CLEF_BIND_ADDRESS="cluster")
    assert done.returncode != 0 and "needs RAY_ADDRESS" in done.stderr


def test_bad_value_is_one_line_naming_the_setting(monkeypatch):
    monkeypatch.setenv("CLEF_BIND_ADDRESS", "everywhere")
    with pytest.raises(ValueError, match=r"^CLEF_BIND_ADDRESS='everywhere': expected"):
        bind_address()
