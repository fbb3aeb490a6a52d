from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mdiexit.runtime.ports import free_ports


def write_cluster(path: Path, package: Path, slowdowns: list[float], mode: str = "mdi-exit",
                  bandwidth_mbps: float = 50, node_tasks: dict[str, list[int]] | None = None, **extra) -> Path:
    """Nodes source, w1, w2, ... with these slowdowns; ``node_tasks`` restricts what a node holds."""
    ports = free_ports(len(slowdowns))
    nodes = [{"name": "source" if i == 0 else f"w{i}", "role": "source" if i == 0 else "worker", "port": p,
              "slowdown": f, "bandwidth_mbps": bandwidth_mbps, "latency_ms": 1}
             for i, (p, f) in enumerate(zip(ports, slowdowns, strict=True))]
    for n in nodes:
        if n["name"] in (node_tasks or {}):
            n["tasks"] = node_tasks[n["name"]]
    path.write_text(yaml.safe_dump({"package": str(package), "mode": mode, "nodes": nodes, **extra}))
    return path


@pytest.fixture
def cluster_file(tmp_path, tiny_package):
    return write_cluster(tmp_path / "cluster.yaml", tiny_package, [30, 10, 20])
