"""The one setting for where the platform's own servers listen: CLEF_BIND_ADDRESS.

    unset or "loopback"  127.0.0.1 (the default: nothing is reachable from another host)
    "cluster"            this host's cluster address: its Ray node address (the address the
                         other hosts already reach it on), for exporters scraped across hosts
    an IP address        exactly that one (e.g. a pod's IP from the downward API)

Every metrics exporter (ingest, training ranks, evaluation) binds through `bind_address()`;
nothing binds to 0.0.0.0 unless a user sets exactly that. docs/cluster.md, "Binding".
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlparse

ENV = "CLEF_BIND_ADDRESS"


def bind_address() -> str:
    value = os.environ.get(ENV, "").strip()
    if value in ("", "loopback"):
        return "127.0.0.1"
    if value == "cluster":
        return _cluster_address()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: expected 'loopback', 'cluster' or an IP address") from None


def _cluster_address() -> str:
    """In a Ray process, its node's address; outside Ray, this host's address on the route to
    the cluster's head (RAY_ADDRESS), found by a connected UDP socket (nothing is sent)."""
    import ray

    if ray.is_initialized():
        return ray.util.get_node_ip_address()
    ray_address = os.environ.get("RAY_ADDRESS", "")
    head = urlparse(ray_address).hostname if "://" in ray_address else ray_address.rsplit(":", 1)[0]
    if not head:
        raise ValueError(f"{ENV}=cluster outside a Ray process needs RAY_ADDRESS (the head) to "
                         "find this host's cluster address")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((head, 9))
        return s.getsockname()[0]
