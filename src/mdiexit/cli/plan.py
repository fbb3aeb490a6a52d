"""The planning commands of the command line: `mdiexit plan` (a cluster's physical limit, DESIGN §4) and `mdiexit
cluster generate` (random meshes and edge-fog trees). `mdiexit.cli` adds them to its parser; the planner itself is
:mod:`mdiexit.planner`, the generators :mod:`mdiexit.topology`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from mdiexit.cli.model import DEFAULT_PACKAGE, UsageError, floats
from mdiexit.policies.modes import MODES

TIMES = ("profile", "macs")
SHOWN_ROWS = 30  # the text lists at most this many nodes and links (the busiest); --json has them all
SHOWN_BOTTLENECK = 8  # and this many binding constraints (the dearest)


def _thresholds(a: argparse.Namespace, pkg, exits: bool) -> tuple[tuple[float, ...], str]:
    """The thresholds to plan at, and where they came from."""
    from mdiexit.policies.modes import no_exit_thresholds

    if not exits:
        return tuple(no_exit_thresholds(pkg.num_tasks)), "no exits in this mode"
    if a.thresholds is not None:
        t = tuple(floats(a.thresholds, "--thresholds"))
        if len(t) != pkg.num_tasks or t[-1] != 0.0 or not all(0.0 <= x <= 1.0 for x in t):
            raise UsageError(f"--thresholds: expected {pkg.num_tasks} numbers in [0, 1], the last 0, got {list(t)}")
        return t, "given"
    if a.target_accuracy is not None:
        p = pkg.profile.for_target(a.target_accuracy)
        return p.thresholds, f"cheapest meeting accuracy {a.target_accuracy} (validation accuracy {p.accuracy:.4f})"
    return tuple(pkg.default_thresholds), "the package's default"


def cmd_plan(a: argparse.Namespace) -> int:
    """The cluster's physical limit: the most items per second its nodes' compute and egress bandwidth can carry at
    the exit mix of the chosen thresholds, as a linear program over where each task runs and how items move along
    the neighbour graph, under the mode's rules. Names the bottleneck (the saturated nodes and links that bound it)
    and, with --target-rate, how many more devices reach that rate. With --objective energy --rate R: the
    placement that carries R items/s for the fewest joules per item, by each node's power model (`power:`). Task
    times: each task's profiled time on this host at batch 1 times each node's slowdown, as the calibrated
    emulation makes them (--times profile), or MACs at the nodes' rated speed (--times macs)."""
    from mdiexit.config import load_cluster
    from mdiexit.energyplan import plan_energy
    from mdiexit.package import load_package
    from mdiexit.planner import costs_from_macs, node_times, plan_throughput
    from mdiexit.policies.modes import rules_for
    from mdiexit.sizing import devices_needed

    cluster = load_cluster(a.cluster)
    pkg = load_package(cluster.package)
    mode = a.mode or cluster.mode
    exits = rules_for(mode).exits
    thresholds, why = _thresholds(a, pkg, exits)
    if a.exit_mix is not None and exits:
        mix, mix_from = floats(a.exit_mix, "--exit-mix"), "given"
    else:
        mix, mix_from = pkg.profile.exit_mix(thresholds), "estimated from the exit profile"
    if a.times == "macs":
        costs = costs_from_macs(pkg)
    else:
        from mdiexit.runtime.device import planner_costs

        costs = planner_costs(pkg, cluster)
    times = node_times(cluster, costs)
    if a.add_kind is not None and a.add_kind not in {n.name for n in cluster.nodes}:
        raise UsageError(f"--add-kind: no node named {a.add_kind!r} in {a.cluster}")
    if a.objective == "energy" and a.rate is None:
        raise UsageError("--objective energy needs --rate: the items/s to carry for the fewest joules")
    if a.objective == "energy" and all(n.power is None for n in cluster.nodes):
        raise UsageError(f"--objective energy: no node of {a.cluster} has a power model; give each a `power:` "
                         "preset or {idle_w, busy_w, j_per_mb} (see docs/guide/energy.md)")
    try:
        plan = plan_throughput(cluster, pkg, mode, mix, times, thresholds) if a.objective == "throughput" else \
            plan_energy(cluster, pkg, mode, mix, times, a.rate, thresholds)
        growth = None if a.target_rate is None else devices_needed(
            cluster, pkg, mode, mix, times, a.target_rate, a.add_kind, a.max_devices)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if a.json:
        out = {"cluster": str(a.cluster), "package": str(cluster.package), "times": a.times, **plan.to_json()}
        if growth is not None:
            out["devices_needed"] = growth.to_json()
        print(json.dumps(out, indent=1))
        return 0
    print_plan(plan, growth, header=[
        f"plan: {a.cluster}, mode {mode}, {len(cluster.nodes)} nodes, package {pkg.name}",
        f"  thresholds {list(thresholds)} ({why})",
        f"  exit mix {_fmt(plan.exit_fraction, '.3f')} ({mix_from}); tasks run by "
        f"{_fmt(plan.reach, '.1%')} of items",
        "  task times: " + (f"{_fmt(times[cluster.source.name].task_s.values(), '.2f', 1e3)} ms on the source "
                            f"(slowdown {cluster.source.slowdown:g}; {_time_note(a.times)})")])
    return 0


def _time_note(times: str) -> str:
    if times != "profile":
        return "MACs at each node's rated speed"
    from mdiexit.emulation.device import profile_file

    kept, host = profile_file()
    where = ("profiled on this host" if kept is None else f"this host's, kept in {kept}" if host
             else f"from the device profile {kept.name}")
    return f"{where} at batch 1 x each node's slowdown"


def _fmt(values, spec: str, scale: float = 1.0) -> str:
    return " ".join(format(v * scale, spec) for v in values)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def print_plan(plan, growth=None, header: list[str] | None = None, file=sys.stdout) -> None:
    """The plan as text: the limit, each node's and link's load, the bottleneck, and the devices needed."""
    for line in header or []:
        print(line, file=file)
    if plan.joules_per_item is None:
        print(f"limit: {plan.throughput_per_s:.1f} items/s", file=file)
        if len(plan.sources) > 1:  # every source backlogged, each at its weight's share
            print("  by source (at their weights): " + ", ".join(f"{n} {v:.1f}" for n, v in plan.sources.items()),
                  file=file)
    else:
        print(f"fewest joules at {plan.throughput_per_s:g} items/s: {plan.joules_per_item:.4f} J/item "
              f"({plan.joules_per_item * plan.throughput_per_s:.1f} W for the counted nodes)", file=file)
        if plan.uncounted:
            print(f"  not counted (no power model: their work looks free, so the plan favours them): "
                  f"{', '.join(plan.uncounted)}", file=file)
    k_tasks = len(plan.reach)
    print(f"  {'node':<16} {'compute':>7} {'egress':>7} {'sends Mb/s':>10}"
          + "".join(f"{'task ' + str(k) + '/s':>10}" for k in range(1, k_tasks + 1)), file=file)
    busy = sorted(plan.nodes.items(), key=lambda kv: -(kv[1]["compute_utilization"] + kv[1]["bytes_per_s"]))
    for name, n in busy[:SHOWN_ROWS]:
        print(f"  {name:<16} {_pct(n['compute_utilization']):>7} {_pct(n['egress_utilization']):>7} "
              f"{n['bytes_per_s'] * 8 / 1e6:>10.2f}"
              + "".join(f"{n['tasks_per_s'].get(k, 0.0):>10.1f}" for k in range(1, k_tasks + 1)), file=file)
    if len(busy) > SHOWN_ROWS:
        idle = sum(1 for _, n in busy[SHOWN_ROWS:] if not n["compute_utilization"] and not n["bytes_per_s"])
        print(f"  ... {len(busy) - SHOWN_ROWS} more nodes, {idle} of them idle (--json lists them all)", file=file)
    if plan.links:
        print("  links (Mbit/s, share of the sender's egress; items/s by the task whose output they carry, 0 = raw):",
              file=file)
        links = sorted(plan.links.items(), key=lambda kv: -kv[1]["bytes_per_s"])
        for (a, b), v in links[:SHOWN_ROWS]:
            items = ", ".join(f"{j}: {x:.1f}" for j, x in sorted(v["items_per_s"].items()))
            coded = f", {v['coded_items_per_s'] / sum(v['items_per_s'].values()):.0%} coded" \
                if v["coded_items_per_s"] > 0 else ""
            print(f"    {a} -> {b}: {v['bytes_per_s'] * 8 / 1e6:.2f} ({_pct(v['egress_share'])}) [{items}{coded}]",
                  file=file)
        if len(links) > SHOWN_ROWS:
            print(f"    ... {len(links) - SHOWN_ROWS} more links", file=file)
    if plan.bottleneck:
        more = len(plan.bottleneck) - SHOWN_BOTTLENECK
        print("bottleneck (+1 % of it raises the limit by): " + ", ".join(
            f"{b.kind} of {b.node} (+{b.gain_per_percent:.2f}/s)" for b in plan.bottleneck[:SHOWN_BOTTLENECK])
            + (f" and {more} more" if more > 0 else ""), file=file)
    if growth is not None:
        if growth.devices is not None:
            print(f"target {growth.target_per_s:g} items/s: {growth.devices} more device(s) like {growth.template} "
                  f"reach {growth.throughput_per_s:.1f} items/s", file=file)
        else:
            why = ("one more adds nothing: the bottleneck is elsewhere" if growth.plateau
                   else f"not within {growth.tried} more")
            print(f"target {growth.target_per_s:g} items/s: out of reach with devices like {growth.template} ({why}; "
                  f"{growth.throughput_per_s:.1f} items/s with {growth.tried})", file=file)


def cmd_cluster_generate(a: argparse.Namespace) -> int:
    """Write a generated cluster file: `mesh`, a random geometric Wi-Fi mesh (nodes uniform in a square, linked
    within radio range, grown until connected, bandwidth from the 802.11n rate at the link distance); or `tree`, an
    edge-fog tree (a fast fog server, edge gateways on Ethernet, slow devices on Wi-Fi, the source a camera at the
    edge). Device speeds are a seeded mix of laptops, Jetsons, Raspberry Pis and Pi Zeros; the same seed writes
    the same file."""
    from mdiexit.config import write_cluster
    from mdiexit.topology import generate

    try:
        nodes, neighbours = generate(a.topology, a.nodes, a.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    write_cluster(a.out, package=a.package, mode="mdi-exit", nodes=nodes, neighbours=neighbours)
    links = sum(len(v) for v in neighbours.values()) // 2
    print(f"wrote {a.out}: {a.topology}, {len(nodes)} nodes, {links} links, source {nodes[0]['name']}")
    return 0


def add_plan_commands(sub: argparse._SubParsersAction, cluster_arg: Callable[[argparse.ArgumentParser], None],
                      doc: Callable[[Callable], str]) -> None:
    from mdiexit.sizing import MAX_DEVICES
    from mdiexit.topology import TOPOLOGIES

    p = sub.add_parser("plan", help="a cluster's limit (items/s), its bottleneck, and the devices a rate needs",
                       description=doc(cmd_plan))
    cluster_arg(p)
    p.add_argument("--mode", default=None, choices=list(MODES), help="plan for this mode (default: the file's)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--thresholds", default=None, help="comma-separated exit thresholds, the last 0 "
                                                      "(default: the package's)")
    t.add_argument("--target-accuracy", type=float, default=None,
                   help="plan at the cheapest thresholds that reach this validation accuracy")
    p.add_argument("--exit-mix", default=None,
                   help="comma-separated fractions finishing at each exit (e.g. a run's exit_fraction) instead of "
                        "the exit profile's estimate at the thresholds")
    p.add_argument("--times", default="profile", choices=TIMES,
                   help="task times: profile them here (x slowdown), or MACs at rated speed (default %(default)s)")
    p.add_argument("--objective", default="throughput", choices=("throughput", "energy"),
                   help="the most items/s (default), or the fewest joules per item at --rate, by each node's "
                        "power model")
    p.add_argument("--rate", type=float, default=None, help="with --objective energy: the items/s to carry")
    p.add_argument("--target-rate", type=float, default=None,
                   help="also say how many more devices reach this many items/s")
    p.add_argument("--add-kind", default=None, metavar="NODE",
                   help="the devices to add are copies of this node: speed, tasks, link, neighbours (default: the "
                        "first worker of the most common kind)")
    p.add_argument("--max-devices", type=int, default=MAX_DEVICES,
                   help="add at most this many devices (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_plan)

    c = sub.add_parser("cluster", help="cluster files: generate one")
    csub = c.add_subparsers(dest="cluster_action", required=True, metavar="ACTION")
    g = csub.add_parser("generate", help="write a random Wi-Fi mesh or edge-fog tree cluster file",
                        description=doc(cmd_cluster_generate))
    g.add_argument("--topology", required=True, choices=TOPOLOGIES)
    g.add_argument("--nodes", type=int, required=True, help="how many nodes, the source included")
    g.add_argument("--seed", type=int, default=0, help="seed of positions, links and device speeds (default 0)")
    g.add_argument("--out", type=Path, required=True, help="the cluster file to write (YAML)")
    g.add_argument("--package", type=Path, default=DEFAULT_PACKAGE,
                   help="model package the file names (default %(default)s)")
    g.set_defaults(func=cmd_cluster_generate)
