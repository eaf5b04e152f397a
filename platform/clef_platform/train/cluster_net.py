"""Which network interface a training worker's collectives use, on a cluster of hosts.

gloo and NCCL pick an interface by resolving the host name, which on a cluster can give
loopback (no DNS entry) or an interface other hosts cannot reach. Each worker instead takes the
interface that carries its host's Ray address (the address the other hosts already reach it
on), unless the config names one (`cluster.socket_ifname`). It is set before Ray Train creates
the process group: a TorchConfig whose backend runs `set_socket_ifname` on every worker first.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

_SIOCGIFADDR = 0x8915


def interface_of(address: str) -> str:
    """The name of the local interface that holds IPv4 `address` (Linux)."""
    if ipaddress.ip_address(address).is_loopback:
        return "lo"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue            # the interface has no IPv4 address
            if socket.inet_ntoa(packed[20:24]) == address:
                return name
    raise ValueError(f"no local interface holds the address {address}; set "
                     "--cluster.socket_ifname to the interface the hosts reach each other on")


def set_socket_ifname(ifname: str = "") -> dict:
    """On a worker: pin gloo/NCCL to `ifname` or to the interface of this host's Ray address."""
    import ray

    address = ray.util.get_node_ip_address()
    name = ifname or interface_of(address)
    os.environ["GLOO_SOCKET_IFNAME"] = name
    os.environ["NCCL_SOCKET_IFNAME"] = name
    return {"address": address, "ifname": name}


@dataclass
class ClusterTorchConfig(TorchConfig):
    socket_ifname: str = ""

    @property
    def backend_cls(self):
        return _ClusterTorchBackend


class _ClusterTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: ClusterTorchConfig):
        worker_group.execute(set_socket_ifname, backend_config.socket_ifname)
        super().on_start(worker_group, backend_config)
