"""The planner's linear program against brute force over task placements, closed forms, and the mode rules."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mdiexit.config import ConfigError, cluster_from_dict
from mdiexit.energyplan import plan_energy
from mdiexit.planner import (
    Costs,
    NodeTimes,
    build_problem,
    limit_from_stats,
    node_times,
    plan_problem,
    plan_throughput,
    reach_of,
)
from mdiexit.sizing import default_template, devices_needed, with_copies


def cluster(nodes: list[dict], neighbours: dict | None = None, mode: str = "mdi-exit"):
    data = {"package": "unused", "mode": mode,
            "nodes": [{"port": 6000 + i, "role": "source" if i == 0 else "worker", **n} for i, n in enumerate(nodes)]}
    if neighbours is not None:
        data["neighbours"] = neighbours
    return cluster_from_dict(data)


def solve(c, mode, reach, times, raw=100, feats=(1000, 1000, 1000), codes=None):
    problem = build_problem(c, mode, reach, times, raw, list(feats)[:len(reach) - 1], codes or {})
    return plan_problem(problem, mode, [reach[k] - (reach[k + 1] if k + 1 < len(reach) else 0.0)
                                        for k in range(len(reach))])


def random_reach(rng, k):
    return tuple(np.concatenate([[1.0], np.sort(rng.uniform(0.05, 1.0, k - 1))[::-1]]))


# ----------------------------------------------------------------------------------- brute force, two nodes

def brute_force_two(reach, t_src, t_w, held_src, held_w, bw_src, bw_w, nbytes, step=0.02, mdi=False):
    """The best throughput over a grid of placements: p[k] = share of task k run on the source. With two nodes the
    best routing is the net flow, so each placement's throughput has a closed form."""
    k_tasks = len(reach)
    axes = []
    for k in range(1, k_tasks + 1):
        if k not in held_w or (mdi and k == 1 and k in held_src):
            axes.append(np.array([1.0]))
        elif k not in held_src:
            axes.append(np.array([0.0]))
        else:
            axes.append(np.linspace(0.0, 1.0, round(1 / step) + 1))
    grids = np.meshgrid(*axes, indexing="ij")
    p = [np.ones_like(grids[0]), *grids]  # p[0]: every raw item starts on the source
    r = np.asarray(reach)
    load_s = sum(r[k - 1] * p[k] * t_src[k] for k in range(1, k_tasks + 1))
    load_w = sum(r[k - 1] * (1 - p[k]) * t_w[k] for k in range(1, k_tasks + 1))
    out_s = sum(nbytes[j] * r[j] * np.maximum(0.0, p[j] - p[j + 1]) for j in range(k_tasks))
    out_w = sum(nbytes[j] * r[j] * np.maximum(0.0, p[j + 1] - p[j]) for j in range(k_tasks))
    with np.errstate(divide="ignore"):
        lam = np.minimum(1 / load_s, 1 / load_w)
        lam = np.minimum(lam, np.where(out_s > 0, bw_src / out_s, np.inf))
        lam = np.minimum(lam, np.where(out_w > 0, bw_w / out_w, np.inf))
    return float(lam.max())


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mode", ["mdi-exit", "mdi"])
def test_two_nodes_match_brute_force(seed, mode):
    rng = np.random.default_rng(seed)
    k_tasks = 2 + seed % 2
    reach = random_reach(rng, k_tasks) if mode == "mdi-exit" else (1.0,) * k_tasks
    every = set(range(1, k_tasks + 1))
    held_w = every if seed % 3 else set(range(2, k_tasks + 1))
    held_src = every if seed % 4 else {1}
    t_src = {k: float(rng.uniform(0.005, 0.03)) for k in every}
    t_w = {k: float(rng.uniform(0.002, 0.02)) for k in every}
    nbytes = [int(rng.integers(500, 40_000)) for _ in range(k_tasks)]  # raw, then task k's features
    bw_mbps = [float(rng.uniform(0.5, 8.0)), float(rng.uniform(0.5, 8.0))]
    c = cluster([{"name": "s", "tasks": sorted(held_src), "bandwidth_mbps": bw_mbps[0]},
                 {"name": "w", "tasks": sorted(held_w), "bandwidth_mbps": bw_mbps[1]}], mode=mode)
    times = {"s": NodeTimes(t_src), "w": NodeTimes(t_w)}
    plan = solve(c, mode, reach, times, raw=nbytes[0], feats=nbytes[1:])
    bw = [b * 1e6 / 8 for b in bw_mbps]
    brute = brute_force_two(reach, t_src, t_w, held_src, held_w, *bw, nbytes, mdi=mode == "mdi")
    assert plan.throughput_per_s >= brute * (1 - 1e-7)  # the LP is at least as good as any grid placement
    assert plan.throughput_per_s <= brute * 1.03  # and the grid gets close to it
    # the LP's own placement, evaluated by the closed form, reaches its throughput
    p = [plan.nodes["s"]["tasks_per_s"].get(k, 0.0) / (plan.throughput_per_s * reach[k - 1])
         for k in range(1, k_tasks + 1)]
    assert _closed_form(reach, t_src, t_w, bw, nbytes, p) == pytest.approx(plan.throughput_per_s, rel=1e-5)


def _closed_form(reach, t_src, t_w, bw, nbytes, p):
    p = [1.0, *p]
    r = reach
    k_tasks = len(reach)
    load_s = sum(r[k - 1] * p[k] * t_src[k] for k in range(1, k_tasks + 1))
    load_w = sum(r[k - 1] * (1 - p[k]) * t_w[k] for k in range(1, k_tasks + 1))
    out_s = sum(nbytes[j] * r[j] * max(0.0, p[j] - p[j + 1]) for j in range(k_tasks))
    out_w = sum(nbytes[j] * r[j] * max(0.0, p[j + 1] - p[j]) for j in range(k_tasks))
    limits = [1 / load_s if load_s > 0 else np.inf, 1 / load_w if load_w > 0 else np.inf,
              bw[0] / out_s if out_s > 1e-12 else np.inf, bw[1] / out_w if out_w > 1e-12 else np.inf]
    return min(limits)


# ----------------------------------------------------------------------------------- brute force, three nodes

def simplex(step, holders):
    """Every split of one task over three nodes on a grid, zero where a node does not hold the task."""
    n = round(1 / step)
    pts = [(a / n, b / n, (n - a - b) / n) for a in range(n + 1) for b in range(n + 1 - a)]
    return np.array([q for q in pts if all(q[i] == 0 or i in holders for i in range(3))])


@pytest.mark.parametrize("seed", range(4))
def test_three_nodes_compute_only_match_brute_force(seed):
    """Unlimited links: the best placement of two tasks over three nodes of unrelated speeds (a node may be
    fast at one task and slow at the other, so specialising beats every node running whole items)."""
    rng = np.random.default_rng(100 + seed)
    reach = random_reach(rng, 2)
    t = rng.uniform(0.002, 0.03, (3, 2))
    holders = [{0, 1, 2}, {0, 1, 2} if seed % 2 else {1, 2}]
    c = cluster([{"name": f"n{i}", "tasks": [k + 1 for k in range(2) if i in holders[k]]} for i in range(3)])
    times = {f"n{i}": NodeTimes({k + 1: float(t[i, k]) for k in range(2)}) for i in range(3)}
    plan = solve(c, "mdi-exit", reach, times)
    s1, s2 = simplex(0.02, holders[0]), simplex(0.02, holders[1])
    load = reach[0] * (s1 * t[:, 0])[:, None, :] + reach[1] * (s2 * t[:, 1])[None, :, :]
    brute = float((1 / load.max(axis=2)).max())
    assert brute * (1 - 1e-7) <= plan.throughput_per_s <= brute * 1.03


def test_proportional_speeds_give_the_runtimes_compute_limit():
    """Times that are one profile x each node's slowdown (the calibrated emulation): the limit is the sum over
    nodes of 1 / (expected seconds per item), the runtime's compute-only ideal, and every node is saturated."""
    c = cluster([{"name": "src", "slowdown": 40}, {"name": "a", "slowdown": 20}, {"name": "b", "slowdown": 80}])
    costs = Costs((0.001, 0.002, 0.004))
    reach = (1.0, 0.4, 0.1)
    plan = solve(c, "mdi-exit", reach, node_times(c, costs))
    per_item = sum(r * s for r, s in zip(reach, costs.task_s, strict=True))
    assert plan.throughput_per_s == pytest.approx(sum(1 / (f * per_item) for f in (40, 20, 80)), rel=1e-6)
    assert {b.node for b in plan.bottleneck if b.kind == "compute"} == {"src", "a", "b"}
    assert all(n["compute_utilization"] == pytest.approx(1.0, abs=1e-6) for n in plan.nodes.values())


# ----------------------------------------------------------------------------------- links, holdings, modes

def test_a_slow_link_is_the_bottleneck():
    """Classic MDI, the source holding task 1 and a fast worker the rest: the source's egress carries every item's
    task-1 features, so the limit is its bandwidth / their size, and the bottleneck names that egress."""
    c = cluster([{"name": "src", "tasks": [1], "bandwidth_mbps": 2.0}, {"name": "w", "tasks": [2, 3]}])
    times = {"src": NodeTimes({1: 0.001}), "w": NodeTimes({2: 0.001, 3: 0.001})}
    plan = solve(c, "mdi", (1.0, 1.0, 1.0), times, feats=(5000, 3000))
    assert plan.throughput_per_s == pytest.approx(2e6 / 8 / 5000, rel=1e-6)
    assert [(b.kind, b.node) for b in plan.bottleneck] == [("egress", "src")]
    assert plan.nodes["src"]["egress_utilization"] == pytest.approx(1.0)
    assert plan.links["src", "w"]["egress_share"] == pytest.approx(1.0)
    assert plan.nodes["w"]["compute_utilization"] < 0.5


def test_codes_lift_a_link_bound_limit_at_the_cost_of_encoding():
    c_off = cluster([{"name": "src", "tasks": [1], "bandwidth_mbps": 2.0, "compress": "off"},
                     {"name": "w", "tasks": [2]}])
    c_on = cluster([{"name": "src", "tasks": [1], "bandwidth_mbps": 2.0, "compress": "on"},
                    {"name": "w", "tasks": [2]}])
    times = {"src": NodeTimes({1: 0.001}, encode_s={1: 0.001}), "w": NodeTimes({2: 0.001}, decode_s={1: 0.0005})}
    off = solve(c_off, "mdi", (1.0, 1.0), times, feats=(5000,), codes={1: 250})
    on = solve(c_on, "mdi", (1.0, 1.0), times, feats=(5000,), codes={1: 250})
    assert off.throughput_per_s == pytest.approx(50.0)  # 250 kB/s / 5000 B
    assert on.throughput_per_s == pytest.approx(500.0)  # the source's compute: 1 ms task + 1 ms encoding
    assert on.links["src", "w"]["coded_items_per_s"] == pytest.approx(500.0)
    assert [(b.kind, b.node) for b in on.bottleneck] == [("compute", "src")]


def test_a_source_that_holds_no_task_forwards_raw_items():
    c = cluster([{"name": "src", "tasks": [], "bandwidth_mbps": 8.0}, {"name": "w1"}, {"name": "w2"}])
    times = {n: NodeTimes({1: 0.01, 2: 0.01}) for n in ("src", "w1", "w2")}
    plan = solve(c, "mdi-exit", (1.0, 0.5), times, raw=1000)
    assert plan.throughput_per_s == pytest.approx(2 / 0.015, rel=1e-6)
    assert plan.nodes["src"]["compute_utilization"] == 0.0 and not plan.nodes["src"]["tasks_per_s"]
    assert plan.nodes["src"]["bytes_per_s"] == pytest.approx(plan.throughput_per_s * 1000, rel=1e-6)
    slow = cluster([{"name": "src", "tasks": [], "bandwidth_mbps": 0.8}, {"name": "w1"}, {"name": "w2"}])
    assert solve(slow, "mdi-exit", (1.0, 0.5), times, raw=1000).throughput_per_s == pytest.approx(100.0)


def test_items_reach_a_far_worker_only_through_a_holder_of_their_task():
    """A chain src -> w1 -> w2: w2 gets work only as items w1 passes on, and only while w1 holds their task."""
    nodes = [{"name": "src", "tasks": [1]}, {"name": "w1", "tasks": [1, 2]}, {"name": "w2", "tasks": [2]}]
    chain = {"src": ["w1"], "w1": ["w2"], "w2": []}
    times = {"src": NodeTimes({1: 0.01}), "w1": NodeTimes({1: 0.01, 2: 0.04}), "w2": NodeTimes({2: 0.01})}
    plan = solve(cluster(nodes, chain), "mdi-exit", (1.0, 1.0), times)
    # w2 runs task 2 at its 100/s; w1 runs both tasks of the 20/s beyond src's task-1 and w2's task-2 capacity
    assert plan.throughput_per_s == pytest.approx(120.0, rel=1e-6)
    assert plan.nodes["w2"]["tasks_per_s"][2] == pytest.approx(100.0)
    assert plan.links["w1", "w2"]["items_per_s"] == pytest.approx({1: 100.0})
    cut = solve(cluster(nodes, {"src": ["w1"], "w1": [], "w2": []}), "mdi-exit", (1.0, 1.0), times)
    assert cut.throughput_per_s == pytest.approx(25.0, rel=1e-6) and not cut.nodes["w2"]["tasks_per_s"]
    unreachable = cluster([{"name": "src", "tasks": [1]}, {"name": "w1", "tasks": [1]}, {"name": "w2", "tasks": [2]}],
                          {"src": ["w1"], "w1": [], "w2": []})
    with pytest.raises(ConfigError, match="task 2 is unreachable"):
        unreachable.check_reachable(2)
    assert solve(unreachable, "mdi-exit", (1.0, 1.0), times).throughput_per_s == 0.0


def test_modes_differ_as_their_rules_say():
    c = cluster([{"name": "src", "slowdown": 4, "bandwidth_mbps": 0.8}, {"name": "a", "slowdown": 1},
                 {"name": "b", "slowdown": 2}, {"name": "far", "slowdown": 1}],
                neighbours={"src": ["a", "b"], "a": ["src", "b", "far"], "b": ["src", "a", "far"], "far": ["a", "b"]})
    times = node_times(c, Costs((0.001, 0.002, 0.003)))
    exits = (0.6, 0.3, 0.1)
    full = sum((0.001, 0.002, 0.003))

    def limit(mode, mix=exits):
        return solve_mode(c, mode, mix, times).throughput_per_s

    assert limit("local") == pytest.approx(1 / (4 * full))  # the source alone, every item to the end
    assert limit("ddi") == pytest.approx(1 / full + 1 / (2 * full))  # whole items on the source's neighbours only
    per_item = 0.001 + 0.4 * 0.002 + 0.1 * 0.003
    assert limit("ddi-exit") == pytest.approx(1 / per_item + 1 / (2 * per_item))
    assert limit("mdi") < limit("mdi-static") <= limit("mdi-exit")
    assert limit("mdi-exit") == pytest.approx(sum(1 / (f * per_item) for f in (4, 1, 2, 1)), rel=1e-6)
    assert limit("ddi-exit") < limit("mdi-exit")  # far is reachable only by passing features on
    assert solve_mode(c, "ddi-exit", exits, times).nodes["far"]["compute_utilization"] == 0.0


def solve_mode(c, mode, mix, times):
    from mdiexit.policies.modes import rules_for

    mix = mix if rules_for(mode).exits else (0.0,) * (len(mix) - 1) + (1.0,)
    return plan_problem(build_problem(c, mode, reach_of(mix), times, 10, [1000, 1000], {}), mode, mix)


def test_reach_of_exit_fractions():
    assert reach_of([0.5, 0.3, 0.2]) == pytest.approx((1.0, 0.5, 0.2))
    with pytest.raises(ValueError, match="summing to 1"):
        reach_of([0.5, 0.3])


# ----------------------------------------------------------------------------------- adding devices

def test_devices_needed_counts_copies_of_the_most_common_kind():
    c = cluster([{"name": "src", "slowdown": 4}, {"name": "pi", "slowdown": 4}, {"name": "jet1", "slowdown": 1},
                 {"name": "jet2", "slowdown": 1}])
    assert default_template(c).name == "jet1"
    pkg = fake_package(2)
    times = node_times(c, Costs((0.001, 0.001)))
    base = plan_throughput(c, pkg, "mdi-exit", [0.5, 0.5], times).throughput_per_s
    per_item = 0.001 + 0.5 * 0.001
    assert base == pytest.approx((1 / 4 + 1 / 4 + 1 + 1) / per_item)
    g = devices_needed(c, pkg, "mdi-exit", [0.5, 0.5], times, base + 2.5 / per_item)  # 3 jetsons' worth: 3
    assert (g.template, g.devices, g.plateau) == ("jet1", 3, False)
    assert g.throughput_per_s == pytest.approx(base + 3 / per_item)
    pis = devices_needed(c, pkg, "mdi-exit", [0.5, 0.5], times, base + 0.5 / per_item, template="pi")
    assert pis.devices == 2
    grown = with_copies(c, "jet1", 2)
    assert {"jet1+1", "jet1+2"} <= set(grown.neighbours["src"]) and grown.neighbours["jet1+2"] == c.neighbours["jet1"]
    assert len({n.port for n in grown.nodes}) == len(grown.nodes)


def test_devices_needed_stops_at_a_bottleneck_they_cannot_lift():
    c = cluster([{"name": "src", "tasks": [1], "bandwidth_mbps": 1.0}, {"name": "w", "tasks": [2]}], mode="mdi")
    pkg = fake_package(2)
    times = node_times(c, Costs((0.0001, 0.01)))
    g = devices_needed(c, pkg, "mdi", [0.0, 1.0], times, 1000.0)
    assert g.devices is None and g.plateau and g.tried == 2
    assert g.throughput_per_s == pytest.approx(1e6 / 8 / pkg.tasks[0].feature_bytes)


# ----------------------------------------------------------------------------------- the command

def fake_package(k: int, root=None):
    """A package whose manifest is real and whose task files are empty (enough for --times macs)."""
    import tempfile
    from pathlib import Path

    from mdiexit.package import load_package

    root = Path(root or tempfile.mkdtemp(prefix="mdiexit-plan-"))
    root.mkdir(parents=True, exist_ok=True)
    shapes = [[1, 8, 8], [4, 8, 8], [8, 4, 4], [16, 2, 2]][:k + 1]
    grid = [0.5, 0.75, 1.0]
    tasks = []
    for i in range(1, k + 1):
        (root / f"task{i}.onnx").write_bytes(b"")
        tasks.append({"index": i, "file": f"task{i}.onnx", "macs": 1_000_000 * i, "input_shape": shapes[i - 1],
                      "features_shape": shapes[i], "temperature": 1.0})
    manifest = {"format": "mdiexit-model/1", "name": "fake", "classes": ["a", "b"],
                "input": {"shape": shapes[0], "dtype": "uint8"}, "tasks": tasks,
                "full_macs": sum(t["macs"] for t in tasks), "default_thresholds": [0.75] * (k - 1) + [0.0],
                "exit_profile": {"thresholds": grid,
                                 "per_exit": [{"exit_fraction": [0.8, 0.5, 0.0], "accuracy": [0.9, 0.95, 1.0]}] * k,
                                 "frontier": [{"thresholds": [0.75] * (k - 1) + [0.0], "accuracy": 0.9,
                                               "compute_fraction": 0.5}]}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return load_package(root)


def test_plan_command_prints_the_limit_and_json(tmp_path):
    pkg = fake_package(3, tmp_path / "pkg")
    path = tmp_path / "c.yaml"
    path.write_text(f"package: {pkg.root}\nnodes:\n"
                    "  - {name: src, role: source, port: 7000, slowdown: 4, bandwidth_mbps: 1}\n"
                    "  - {name: w1, role: worker, port: 7001, slowdown: 2}\n"
                    "  - {name: w2, role: worker, port: 7002, slowdown: 2}\n")
    run = [sys.executable, "-m", "mdiexit.cli", "plan", "--cluster", str(path), "--times", "macs"]
    out = subprocess.run([*run, "--json", "--target-rate", "1900"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["exit_fraction"] == pytest.approx([0.5, 0.0, 0.5])  # nested: exit 2 adds nobody to exit 1's half
    assert d["thresholds"] == [0.75, 0.75, 0.0]
    reach = (1.0, 0.5, 0.5)
    per_item = sum(r * m / 4e9 for r, m in zip(reach, (1e6, 2e6, 3e6), strict=True))
    assert d["throughput_per_s"] == pytest.approx((1 / 4 + 1 / 2 + 1 / 2) / per_item, rel=1e-6)
    assert {b["node"] for b in d["bottleneck"]} == {"src", "w1", "w2"}
    assert d["devices_needed"]["template"] == "w1" and d["devices_needed"]["devices"] == 1
    text = subprocess.run([*run, "--mode", "mdi"], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "limit:" in text.stdout and "bottleneck" in text.stdout and "no exits in this mode" in text.stdout
    bad = subprocess.run([*run, "--add-kind", "nope", "--target-rate", "1"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--add-kind" in bad.stderr and "Traceback" not in bad.stderr
    no_rate = subprocess.run([*run, "--objective", "energy"], capture_output=True, text=True, timeout=120)
    assert no_rate.returncode == 2 and "--rate" in no_rate.stderr and "Traceback" not in no_rate.stderr
    no_power = subprocess.run([*run, "--objective", "energy", "--rate", "10"], capture_output=True, text=True,
                              timeout=120)
    assert no_power.returncode == 2 and "power" in no_power.stderr and "Traceback" not in no_power.stderr


# ----------------------------------------------------------------------------------- the energy objective

def test_the_energy_plan_fills_the_cheapest_joules_first(tmp_path):
    """Three nodes whose joules per item above idle differ (source 4 W x 8 ms, w1 2 W x 4 ms, w2 4 W x 4 ms): at a
    rate w1 can carry alone everything runs there; past w1's capacity the rest goes to w2, never to the source.
    J/item is the counted nodes' idle draw plus that work, per item; past the limit the plan says so."""
    pkg = fake_package(3, tmp_path / "pkg")
    c = cluster([{"name": "src", "slowdown": 4, "power": {"idle_w": 2, "busy_w": 6}},
                 {"name": "w1", "slowdown": 2, "power": {"idle_w": 1, "busy_w": 3}},
                 {"name": "w2", "slowdown": 2, "power": {"idle_w": 1, "busy_w": 5}}])
    times = node_times(c, Costs((0.001, 0.001, 0.001)))
    mix = pkg.profile.exit_mix(pkg.default_thresholds)  # reach 1, 0.5, 0.5: 2 ms per item at slowdown 1
    low = plan_energy(c, pkg, "mdi-exit", mix, times, 100)
    assert low.throughput_per_s == 100
    assert low.joules_per_item == pytest.approx(4 / 100 + 2 * 0.004, rel=1e-6)
    assert low.nodes["w1"]["compute_utilization"] == pytest.approx(0.4, rel=1e-6)
    assert low.nodes["src"]["compute_utilization"] == low.nodes["w2"]["compute_utilization"] == 0
    high = plan_energy(c, pkg, "mdi-exit", mix, times, 400)
    assert high.nodes["w1"]["compute_utilization"] == pytest.approx(1.0, rel=1e-6)
    assert high.nodes["w2"]["compute_utilization"] == pytest.approx(150 * 0.004, rel=1e-6)
    assert high.joules_per_item == pytest.approx((4 + 250 * 2 * 0.004 + 150 * 4 * 0.004) / 400, rel=1e-6)
    limit = plan_throughput(c, pkg, "mdi-exit", mix, times).throughput_per_s
    assert limit == pytest.approx(1 / 0.008 + 2 * 250, rel=1e-6)
    with pytest.raises(ValueError, match="limit of 625.0"):
        plan_energy(c, pkg, "mdi-exit", mix, times, limit * 1.01)


def test_the_energy_plan_counts_only_nodes_with_a_power_model(tmp_path):
    """A node without `power:` costs nothing and adds no idle draw; with none at all there is no J/item."""
    pkg = fake_package(3, tmp_path / "pkg")
    c = cluster([{"name": "src", "slowdown": 4, "power": {"idle_w": 2, "busy_w": 6}}, {"name": "w", "slowdown": 2}])
    times = node_times(c, Costs((0.001, 0.001, 0.001)))
    mix = pkg.profile.exit_mix(pkg.default_thresholds)
    plan = plan_energy(c, pkg, "mdi-exit", mix, times, 100)
    assert plan.joules_per_item == pytest.approx(2 / 100, rel=1e-6)  # all on the uncounted worker
    assert plan.uncounted == ("w",) and plan.to_json()["uncounted"] == ["w"]
    bare = cluster([{"name": "src", "slowdown": 4}, {"name": "w", "slowdown": 2}])
    assert plan_energy(bare, pkg, "mdi-exit", mix, node_times(bare, Costs((0.001,) * 3)), 100).joules_per_item is None


# ----------------------------------------------------------------------------------- a run's ideal

def test_a_runs_ideal_counts_the_link_that_binds(tmp_path):
    """The runtime's compute-only ideal has no answer where nodes hold only some tasks; the planner's limit, from
    the nodes' calibrated times and the run's exit mix, does, and it is the link's."""
    from functools import partial

    from mdiexit.runtime.ledger import Ledger
    from mdiexit.runtime.metrics import ideal_throughput, summarize

    pkg = fake_package(2, tmp_path / "pkg")
    c = cluster([{"name": "src", "tasks": [1], "bandwidth_mbps": 0.8}, {"name": "w", "tasks": [2]}], mode="mdi")
    stats = {"src": {"single_task_1_s": 0.001, "limit_task_1_s": 0.0008, "tasks_run_1": 10.0},
             "w": {"single_task_2_s": 0.001, "limit_task_2_s": 0.0008, "tasks_run_2": 10.0}}
    ledger = Ledger()
    for i in range(4):
        ledger.admit(i, 0.0, truth=0)
        ledger.complete(i, 0, 2, 0.9, "w", 0.5)
    assert ideal_throughput(stats, [0.0, 1.0]) is None
    link = 0.8e6 / 8 / pkg.tasks[0].feature_bytes
    s = summarize(ledger, 2, (0.0, 1.0), stats, {}, physical_limit=partial(limit_from_stats, c, pkg, "mdi"))
    assert s["ideal_throughput_per_s"] == pytest.approx(link) == s["ideal_batched_throughput_per_s"]
    assert s["efficiency"] == pytest.approx(4 / link)
    assert "ideal_throughput_per_s" in summarize(ledger, 2, (0.0, 1.0), stats, {})  # without it: as before
    real = {**stats, "w": {"tasks_run_2": 10.0}}  # an uncalibrated (real) device: no limit
    assert limit_from_stats(c, pkg, "mdi", real, [0.0, 1.0]) is None
    assert limit_from_stats(c, pkg, "mdi", {"src": stats["src"]}, [0.0, 1.0]) is None  # a node's stats missing


def test_several_sources_enter_at_their_weights_and_a_slow_uplink_binds_its_own_share():
    """Two cameras holding no task, one worker: each camera's raw items cross its own uplink. At weights 1 and 3
    the second camera carries three quarters of the items, so its uplink binds first."""
    c = cluster([{"name": "cam1", "tasks": [], "bandwidth_mbps": 1.0, "weight": 1},
                 {"name": "cam2", "role": "source", "tasks": [], "bandwidth_mbps": 1.0, "weight": 3},
                 {"name": "w"}])
    times = {"cam1": NodeTimes({}), "cam2": NodeTimes({}), "w": NodeTimes({1: 1e-5, 2: 1e-5})}
    plan = solve(c, "mdi-exit", (1.0, 0.5), times, raw=1000)
    assert plan.throughput_per_s == pytest.approx(1e6 / 8 / 1000 / 0.75, rel=1e-6)  # cam2's uplink, at 3/4
    assert plan.sources == pytest.approx({"cam1": plan.throughput_per_s / 4, "cam2": plan.throughput_per_s * 3 / 4})
    assert [(b.kind, b.node) for b in plan.bottleneck] == [("egress", "cam2")]
