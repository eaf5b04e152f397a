"""CLEF_BIND_ADDRESS: the platform's servers bind to loopback unless told otherwise."""

from __future__ import annotations

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


def test_explicit_address_and_cluster_address(monkeypatch):
    monkeypatch.setenv("CLEF_BIND_ADDRESS", "127.0.0.2")
    assert bind_address() == "127.0.0.2"
    # outside Ray, "cluster" is this host's address on the route to the head in RAY_ADDRESS
    monkeypatch.setenv("CLEF_BIND_ADDRESS", "cluster")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert bind_address() == "127.0.0.1"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ValueError, match="needs RAY_ADDRESS"):
        bind_address()


def test_bad_value_is_one_line_naming_the_setting(monkeypatch):
    monkeypatch.setenv("CLEF_BIND_ADDRESS", "everywhere")
    with pytest.raises(ValueError, match=r"^CLEF_BIND_ADDRESS='everywhere': expected"):
        bind_address()
