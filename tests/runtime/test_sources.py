"""Several sources in one cluster: each admits its own stream, its items' results come back to it, and the run's
summary and items.csv tell the sources apart (runtime.feed, policies.fairqueue)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter

from mdiexit.config import write_cluster
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.ports import local_nodes
from mdiexit.runtime.report import write_results


def two_cameras(tmp_path, package, **cam2) -> tuple:
    nodes = local_nodes([{"slowdown": 20}, {"slowdown": 10}, {"slowdown": 20}], bandwidth_mbps=50, latency_ms=1)
    nodes[0].update(name="cam1", sink=f"jsonl:{tmp_path / 'cam1.jsonl'}")
    nodes[2].update(name="cam2", role="source", weight=3, sink=f"jsonl:{tmp_path / 'cam2.jsonl'}", **cam2)
    return write_cluster(tmp_path / "cams.yaml", package=package, mode="mdi-exit", nodes=nodes), nodes


def test_each_source_admits_its_own_stream_and_gets_its_own_results(tmp_path, tiny_package):
    cluster, _ = two_cameras(tmp_path, tiny_package, stream="40", target_accuracy=0.5)
    result = run_cluster(cluster, RunOptions(rate=40, duration_s=3.0, warmup_s=0.5, live=False, drain_timeout_s=30))
    s = result.summary
    parts = s["sources"]
    assert set(parts) == {"cam1", "cam2"} and s["lost"] == 0 and s["failed"] == 0
    assert parts["cam1"]["weight"] == 1 and parts["cam2"]["weight"] == 3
    assert parts["cam2"]["stream"] == "40" and parts["cam2"]["offered"] == 40  # its own stream, each item once
    assert parts["cam2"]["target_accuracy"] == 0.5 and parts["cam1"]["stream"] == "test"
    for p in parts.values():
        assert p["lost"] == 0 and p["completed"] == p["admitted"] == p["offered"] > 0
    assert s["completed"] == sum(p["completed"] for p in parts.values())
    write_results(result, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "items.csv").open()))
    assert Counter(r["source"] for r in rows) == {n: p["admitted"] for n, p in parts.items()}
    for name, p in parts.items():  # each source's sink has its own items' outcomes, once each
        lines = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert {m["source"] for m in lines} == {name} and len(lines) == p["offered"]
        assert len({m["item"] for m in lines}) == len(lines)


def test_a_bad_stream_in_the_cluster_file_is_one_line(tmp_path, tiny_package):
    cluster, nodes = two_cameras(tmp_path, tiny_package)
    text = cluster.read_text().replace("name: cam2", "name: cam2\n  stream: camera-7")
    cluster.write_text(text)
    out = subprocess.run([sys.executable, "-m", "mdiexit.cli", "run", "--cluster", str(cluster), "--quiet",
                          "--duration", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nodes[2].stream: expected test, all" in out.stderr and "'camera-7'" in out.stderr
