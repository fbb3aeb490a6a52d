from __future__ import annotations

from pathlib import Path

import pytest

from mdiexit.config import write_cluster as write_cluster_file
from mdiexit.runtime.ports import local_nodes


def write_cluster(path: Path, package: Path, slowdowns: list[float], mode: str = "mdi-exit",
                  bandwidth_mbps: float = 50, node_tasks: dict[str, list[int]] | None = None, power: str | None = None,
                  **extra) -> Path:
    """Nodes source, w1, w2, ... with these slowdowns; ``node_tasks`` restricts what a node holds; ``power``: every
    node's power model (a preset)."""
    nodes = local_nodes([{"slowdown": f} for f in slowdowns], bandwidth_mbps=bandwidth_mbps, latency_ms=1,
                        **({"power": power} if power else {}))
    for n in nodes:
        if n["name"] in (node_tasks or {}):
            n["tasks"] = node_tasks[n["name"]]
    return write_cluster_file(path, package=package, mode=mode, nodes=nodes, **extra)


@pytest.fixture
def cluster_file(tmp_path, tiny_package):
    return write_cluster(tmp_path / "cluster.yaml", tiny_package, [30, 10, 20])
