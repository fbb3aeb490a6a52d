"""Generated clusters: valid files, connected, deterministic per seed, and plannable."""

import subprocess
import sys
from collections import deque

import pytest

from mdiexit.config import load_cluster, write_cluster
from mdiexit.planner import Costs, node_times, plan_throughput
from mdiexit.topology import FOG, MAC_EFFICIENCY, WIFI_RATES_MBPS, generate
from tests.test_planner import fake_package


def reachable(cfg) -> set[str]:
    seen, todo = {cfg.source.name}, deque([cfg.source.name])
    while todo:
        for m in cfg.neighbours_of(todo.popleft()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def write(tmp_path, topology, n, seed, name="c.yaml"):
    nodes, neighbours = generate(topology, n, seed)
    return write_cluster(tmp_path / name, package=tmp_path / "pkg", nodes=nodes, neighbours=neighbours)


@pytest.mark.parametrize("topology", ["mesh", "tree"])
@pytest.mark.parametrize("n", [2, 3, 25, 1000])
def test_generated_clusters_load_and_are_connected(tmp_path, topology, n):
    cfg = load_cluster(write(tmp_path, topology, n, seed=n))
    assert len(cfg.nodes) == n and len(cfg.workers) == n - 1
    assert reachable(cfg) == {node.name for node in cfg.nodes}
    assert all(a in cfg.neighbours_of(b) for a in cfg.neighbours for b in cfg.neighbours_of(a))  # symmetric
    cfg.check_reachable(4)
    cfg.check_reachable(4, source_computes=False, offload_later=False)
    assert len({node.slowdown for node in cfg.workers}) > (2 if n >= 25 else 0)  # a mix of device speeds


def test_mesh_bandwidths_come_from_the_wifi_rate_table_and_tree_has_a_fog_root(tmp_path):
    mesh = load_cluster(write(tmp_path, "mesh", 60, seed=3, name="m.yaml"))
    rates = {r * MAC_EFFICIENCY for r in WIFI_RATES_MBPS}
    assert {node.bandwidth_mbps for node in mesh.nodes} <= rates
    tree = load_cluster(write(tmp_path, "tree", 60, seed=3, name="t.yaml"))
    fog = tree.node("fog")
    assert fog.bandwidth_mbps == FOG["bandwidth_mbps"] and fog.slowdown == min(n.slowdown for n in tree.nodes)
    assert len(tree.neighbours_of("camera")) == 1 and tree.neighbours_of("camera")[0].startswith("fog-gw")
    assert sum(len(v) for v in tree.neighbours.values()) == 2 * (len(tree.nodes) - 1)  # a tree: n - 1 links


@pytest.mark.parametrize("topology", ["mesh", "tree"])
def test_same_seed_same_file_other_seed_other_file(tmp_path, topology):
    a = write(tmp_path, topology, 40, seed=5, name="a.yaml").read_text()
    b = write(tmp_path, topology, 40, seed=5, name="b.yaml").read_text()
    c = write(tmp_path, topology, 40, seed=6, name="c.yaml").read_text()
    assert a == b and a != c


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="topology"):
        generate("ring", 5)
    with pytest.raises(ValueError, match="nodes"):
        generate("mesh", 1)


def test_generate_command_writes_a_plannable_cluster(tmp_path):
    pkg = fake_package(3, tmp_path / "pkg")
    out = tmp_path / "mesh.yaml"
    run = subprocess.run([sys.executable, "-m", "mdiexit.cli", "cluster", "generate", "--topology", "mesh",
                          "--nodes", "30", "--seed", "2", "--out", str(out), "--package", str(pkg.root)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "30 nodes" in run.stdout
    cfg = load_cluster(out)
    costs = Costs((0.001, 0.001, 0.001))
    plan = plan_throughput(cfg, pkg, "mdi-exit", [0.5, 0.25, 0.25], node_times(cfg, costs))
    compute_only = sum(1 / (n.slowdown * 0.00175) for n in cfg.nodes)
    assert 0 < plan.throughput_per_s <= compute_only * (1 + 1e-9)
    assert plan.bottleneck
