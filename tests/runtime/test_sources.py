"""Several sources in one cluster: each admits its own stream, its items' results come back to it, and the run's
summary and items.csv tell the sources apart (runtime.feed, policies.fairqueue)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from collections import Counter

import pytest

from mdiexit.client import Client
from mdiexit.config import ConfigError, cluster_dict, load_cluster, write_cluster
from mdiexit.data import load_test_split
from mdiexit.package import load_package
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import ClusterError, RunOptions
from mdiexit.runtime.ports import free_ports, local_nodes
from mdiexit.runtime.report import write_results
from mdiexit.security import create_client_key, create_keys

pytestmark = pytest.mark.cluster


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


def test_clients_name_the_source_they_feed(tmp_path, tiny_package):
    keys = tmp_path / "keys"
    create_keys(["cam1", "w1", "cam2"], keys)
    create_client_key(keys)
    ports = free_ports(2)
    path, _ = two_cameras(tmp_path, tiny_package, client_port=ports[1])
    data = cluster_dict(load_cluster(path))
    data["nodes"][0]["client_port"], data["keys_dir"] = ports[0], str(keys)
    path = write_cluster(path, data)
    images = load_test_split(load_package(tiny_package)).images[:6]
    stop = threading.Event()
    done: dict = {}
    service = threading.Thread(target=lambda: done.update(result=run_cluster(path, RunOptions(
        serve=stop, live=False, drain_timeout_s=30, warmup_s=0.0))), daemon=True)
    service.start()
    try:
        counts = {"cam1": 2, "cam2": 4}
        for source, n in counts.items():
            with Client.from_cluster(path, source=source, timeout_s=60) as client:
                assert [client.classify(images[k]).exit >= 1 for k in range(n)] == [True] * n
    finally:
        stop.set()
        service.join(timeout=120)
    parts = done["result"].summary["sources"]
    assert {n: (p["offered"], p["completed"], p["lost"]) for n, p in parts.items()} == \
        {n: (k, k, 0) for n, k in counts.items()}
    with pytest.raises(ConfigError, match="no source named 'cam3'; its sources are cam1, cam2"):
        Client.from_cluster(path, source="cam3")


def test_each_source_may_run_in_its_own_process(tmp_path, tiny_package):
    """`mdiexit source --name cam2` on one machine, the cluster (cam1 and the workers) on another: cam2 streams
    its items through the shared workers and reports its own part."""
    keys = tmp_path / "keys"
    create_keys(["cam1", "w1", "cam2"], keys)
    path, _ = two_cameras(tmp_path, tiny_package, stream="30")
    data = cluster_dict(load_cluster(path))
    data["keys_dir"] = str(keys)
    path = write_cluster(path, data)
    done: dict = {}
    site = threading.Thread(target=lambda: done.update(site=run_cluster(path, RunOptions(
        rate=20, duration_s=6.0, live=False, sources=("cam1",)))), daemon=True)
    site.start()
    cam2 = run_cluster(path, RunOptions(rate=40, duration_s=3.0, live=False, sources=("cam2",)), spawn=False)
    site.join(timeout=120)
    assert set(cam2.summary["sources"]) == {"cam2"} and set(done["site"].summary["sources"]) == {"cam1"}
    part = cam2.summary["sources"]["cam2"]
    assert part["offered"] == part["completed"] == 30 and part["lost"] == 0  # its whole stream
    assert done["site"].summary["lost"] == 0
    with pytest.raises(ClusterError, match="--name cam9: not a source"):
        run_cluster(path, RunOptions(sources=("cam9",)), spawn=False)
