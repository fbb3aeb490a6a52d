"""Free TCP ports on loopback, for clusters started on one machine (tests, benchmarks)."""

from __future__ import annotations

import socket


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
