"""`mdiexit bench overhead`: the runtime's own host CPU, per item per node visit.

The runtime's CPU is each node process's CPU time less the host CPU inside the model's and codecs' calls (the
nodes measure both, runtime/node.py); a node visit is an admission at the source or an item's DATA arriving at a
node. Whole runs of `mdiexit run`, as a user starts them:
  - edge4 in mdi-exit, mdi and ddi-exit, at a rate well under capacity (`low` x the planned limit) and at
    saturation (`high` x it); the headline, mdi-exit under capacity, three times (its median: it moves between
    runs more than the others);
  - a chain: a source that only dispatches and one worker per task, each passing items to the next;
  - idle: edge4 at 1 item/s, whose CPU is the runtime's fixed cost per second (heartbeats, polling, links);
  - charged: the saturated mdi-exit run again with every node's `cpu_slowdown` set to its board (the board its
    `power` names, emulation/boards.py), so that each device pays for the runtime as that board would;
  - zero-cost: the chain and edge4 again with `emulation: zero-cost` (emulation/zerocost.py: every task returns at
    once), the runtime alone: the chain under capacity at the chain's low rate, and both offered more than the
    runtime can carry (`zero_cost_rate`), where the host's two cores are the only limit.
From them: µs per item-hop for each run, by process, the messages per item by kind, the fixed cost per second of
each process, the marginal µs per visit (the saturated edge4 run less its fixed cost): the figures the
simulator charges under `cpu_slowdown` (emulation/overhead.py); and what charging the boards costs in throughput.
Writes OUT (JSON).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mdiexit import util
from mdiexit.config import load_cluster, write_cluster
from mdiexit.emulation.boards import CPU_PRESETS
from mdiexit.package import load_package
from mdiexit.planner import node_times, plan_throughput
from mdiexit.runtime.device import planner_costs
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.ports import local_nodes, on_free_ports

MODES = ("mdi-exit", "mdi", "ddi-exit")


@dataclass
class OverheadBenchOptions:
    duration_s: float = 10.0  # seconds of admission per run
    low: float = 0.3  # the rate well under capacity, x the planned limit
    high: float = 1.5  # saturation, x the planned limit
    idle_rate: float = 1.0  # items/s of the idle run
    modes: tuple[str, ...] = MODES
    boards: bool = True  # also the saturated mdi-exit run with every node's board charged (`cpu_slowdown`)
    zero_cost: bool = True  # also the runs with a model whose calls return at once (the runtime alone)
    zero_cost_rate: float = 20_000.0  # items/s offered to saturate the runtime alone
    headline_runs: int = 3  # runs of the headline (mdi-exit under capacity): the median's, as it moves between runs


def say(msg: str) -> None:
    util.say("bench", msg, clock=True)


def measure(cluster: Path, mode: str, rate: float, o: OverheadBenchOptions, label: str) -> dict:
    s = run_cluster(cluster, RunOptions(mode=mode, rate=rate, duration_s=o.duration_s, warmup_s=o.duration_s / 4,
                                        live=False, drain_timeout_s=60)).summary
    elapsed = s.get("duration_s") or o.duration_s
    kinds: dict[str, int] = {}
    for n in s["per_node"].values():
        for kind, count in n.get("messages_received", {}).items():
            kinds[kind] = kinds.get(kind, 0) + count
    visits = s["node_visits"]
    row = {"run": label, "mode": mode, "rate": rate, "throughput_per_s": s["throughput_per_s"],
           "admitted": s["admitted"], "lost": s["lost"], "visits": visits,
           "cpu_us_per_item_hop": s["runtime_cpu_us_per_item_hop"],
           "messages_per_item": {k: v / max(1, s["admitted"]) for k, v in sorted(kinds.items())},
           "by_process": {name: {"runtime_cpu_s": n["runtime_cpu_s"],
                                 "cpu_share": n["runtime_cpu_s"] / elapsed if n["runtime_cpu_s"] is not None else None}
                          for name, n in s["per_node"].items()},
           "runtime_share": {name: n.get("runtime_share") for name, n in s["per_node"].items()},
           "elapsed_s": elapsed}
    say(f"{label}: {row['throughput_per_s']:.1f} items/s, {row['cpu_us_per_item_hop']:.0f} µs of runtime CPU per "
        f"item-hop ({visits} visits), lost {row['lost']}")
    return row


def median_run(runs: list[dict]) -> dict:
    """The run of median runtime CPU per item-hop, with every run's figure beside it (``repeats_us``)."""
    ordered = sorted(runs, key=lambda r: r["cpu_us_per_item_hop"])
    return {**ordered[(len(ordered) - 1) // 2], "repeats_us": [r["cpu_us_per_item_hop"] for r in runs]}


def chain_cluster(folder: Path, package: Path, slowdown: float = 20.0) -> Path:
    """A source that only dispatches, then one worker per task, each sending on to the next only."""
    k = load_package(package).num_tasks
    nodes = local_nodes([{"tasks": []}] + [{"tasks": [t], "slowdown": slowdown} for t in range(1, k + 1)],
                        latency_ms=1)
    names = [n["name"] for n in nodes]
    neighbours = {a: [b] for a, b in zip(names, names[1:], strict=False)}
    return write_cluster(folder / "chain.yaml", package=package, mode="mdi-exit", nodes=nodes, neighbours=neighbours)


def zero_cost_cluster(folder: Path, cluster: Path, name: str) -> Path:
    """``cluster`` with `emulation: zero-cost`: every task returns at once (the runtime alone)."""
    return write_cluster(folder / f"{name}-zero-cost.yaml", cluster, emulation="zero-cost")


def zero_cost_runs(edge: Path, chain: Path, chain_low: float, folder: Path, o: OverheadBenchOptions) -> dict:
    """The runtime alone: the chain under capacity and saturated, and edge4 saturated, with a zero-cost model."""
    zchain, zedge = zero_cost_cluster(folder, chain, "chain"), zero_cost_cluster(folder, edge, "edge")
    runs = [measure(zchain, "mdi-exit", chain_low, o, "zero-cost chain low"),
            measure(zchain, "mdi-exit", o.zero_cost_rate, o, "zero-cost chain saturated"),
            measure(zedge, "mdi-exit", o.zero_cost_rate, o, "zero-cost mdi-exit saturated")]
    return {"cpu_us_per_item_hop_saturated": runs[1]["cpu_us_per_item_hop"],
            "throughput_per_s": runs[1]["throughput_per_s"], "runs": runs}


def boards_cluster(folder: Path, cluster: Path) -> Path | None:
    """``cluster`` with each node's `cpu_slowdown` set to the board its `power` preset names (None: no node's does)."""
    boards = {n.name: n.power for n in load_cluster(cluster).nodes
              if isinstance(n.power, str) and n.power in CPU_PRESETS}
    if not boards:
        return None
    return write_cluster(folder / "boards.yaml", cluster,
                         every_node=lambda n: {"cpu_slowdown": boards[n["name"]]} if n["name"] in boards else {})


def charged(cluster: Path, folder: Path, o: OverheadBenchOptions, uncharged: dict) -> dict | None:
    """The saturated mdi-exit run with the boards charged, beside the same run uncharged."""
    boards = boards_cluster(folder, cluster)
    if boards is None:
        say("charged: no node's power names a board with a cpu_slowdown preset; skipped")
        return None
    row = measure(boards, "mdi-exit", uncharged["rate"], o, "mdi-exit saturated, boards charged")
    return {"cpu_slowdown": {n.name: n.cpu_slowdown for n in load_cluster(boards).nodes},
            "throughput_ratio": row["throughput_per_s"] / uncharged["throughput_per_s"],
            "runtime_share": row["runtime_share"], "run": row}


def planned_limit(cluster: Path, mode: str) -> float:
    c = load_cluster(cluster)
    pkg = load_package(c.package)
    return plan_throughput(c, pkg, mode, pkg.profile.exit_mix(pkg.default_thresholds),
                           node_times(c, planner_costs(pkg, c))).throughput_per_s


def bench_overhead(cluster_path: Path, out: Path, o: OverheadBenchOptions) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="mdiexit-overhead-") as d:
        edge = on_free_ports(cluster_path, Path(d) / "edge.yaml")
        idle = measure(edge, "mdi-exit", o.idle_rate, o, "idle")
        for mode in o.modes:
            limit = planned_limit(edge, mode)
            for share, name in ((o.low, "low"), (o.high, "saturated")):
                repeats = o.headline_runs if (mode, name) == ("mdi-exit", "low") else 1
                runs.append(median_run([measure(edge, mode, round(share * limit, 1), o, f"{mode} {name}")
                                        for _ in range(repeats)]))
        chain = chain_cluster(Path(d), load_cluster(cluster_path).package)
        limit = planned_limit(chain, "mdi-exit")
        for share, name in ((o.low, "low"), (o.high, "saturated")):
            runs.append(measure(chain, "mdi-exit", round(share * limit, 1), o, f"chain {name}"))
        sat = next(r for r in runs if r["run"] == "mdi-exit saturated")
        boards = charged(edge, Path(d), o, sat) if o.boards else None
        zero = zero_cost_runs(edge, chain, round(o.low * limit, 1), Path(d), o) if o.zero_cost else None
    headline = next(r for r in runs if r["run"] == "mdi-exit low")
    fixed_per_s = {n: p["runtime_cpu_s"] / idle["elapsed_s"] for n, p in idle["by_process"].items()}
    variable_s = sum(p["runtime_cpu_s"] for p in sat["by_process"].values()) - sum(fixed_per_s.values()) * sat[
        "elapsed_s"]
    result = {
        "cpu_us_per_item_hop": headline["cpu_us_per_item_hop"],
        "cpu_us_per_item_hop_saturated": sat["cpu_us_per_item_hop"],
        "marginal_us_per_visit": 1e6 * variable_s / max(1, sat["visits"]),
        "fixed_us_per_s": {n: 1e6 * v for n, v in fixed_per_s.items()},
        "by_kind": headline["messages_per_item"],
        "by_process": headline["by_process"],
        "charged": boards,
        "zero_cost": zero,
        "runs": [idle, *runs],
        "cluster": str(cluster_path), "options": vars(o),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    say(f"runtime CPU: {result['cpu_us_per_item_hop']:.0f} µs per item-hop under capacity, "
        f"{result['cpu_us_per_item_hop_saturated']:.0f} saturated; marginal {result['marginal_us_per_visit']:.0f} µs "
        f"per visit; fixed {sum(result['fixed_us_per_s'].values()) / 1e6:.2f} CPU-s per s over the site"
        + (f"; with the boards charged, {boards['throughput_ratio']:.2f}x the saturated throughput" if boards else "")
        + (f"; the runtime alone (zero-cost chain) {zero['cpu_us_per_item_hop_saturated']:.0f} µs per item-hop at "
           f"{zero['throughput_per_s']:.0f} items/s" if zero else "")
        + f". Wrote {out}")
    return result

