"""Free TCP ports on loopback, for clusters started on one machine (tests, benchmarks)."""

from __future__ import annotations

import socket
from pathlib import Path


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that were free a moment ago (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_nodes(per_node: list[dict] | int, **common) -> list[dict]:
    """Cluster-file nodes on free loopback ports: the first is the source ("source"), the others workers ("w1",
    "w2", ...). ``per_node``: each node's own fields (or just how many nodes); ``common``: fields of every node.

        write_cluster(path, package=pkg, nodes=local_nodes([{"slowdown": 30}, {"slowdown": 10}], latency_ms=1))
    """
    own = [{} for _ in range(per_node)] if isinstance(per_node, int) else per_node
    return [{"name": "source" if i == 0 else f"w{i}", "role": "source" if i == 0 else "worker", "port": port,
             **common, **fields} for i, (port, fields) in enumerate(zip(free_ports(len(own)), own, strict=True))]


def on_free_ports(path: Path, out: Path) -> Path:
    """A copy of a cluster file whose nodes listen on free loopback ports (the examples' fixed ports may be taken
    on a shared machine)."""
    from mdiexit.config import load_cluster, write_cluster

    ports = iter(free_ports(len(load_cluster(path).nodes)))
    return write_cluster(out, path, every_node=lambda n: {"port": next(ports)})
