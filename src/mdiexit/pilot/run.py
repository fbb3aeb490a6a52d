"""`mdiexit pilot`: measure a site as it is, in minutes, and report what mdi-exit gains over the options a buyer
would weigh.

Each option runs on the site's own cluster file (its devices, emulated or real, and its links) for an equal share
of the time, at the accuracy target, with rate adaptation: the admission rate climbs to what the option sustains
at the cheapest thresholds that meet the target, so its throughput is its items per second at that accuracy.

- `local`: the source alone (its own exits, nothing offloaded);
- `fastest`: the source and its fastest device, everything sent there (ddi-exit on those two);
- `ddi-exit`: every item sent to the workers, early exits on;
- `mdi-exit-fixed`: mdi-exit at a fixed rate, 90 % of the planner's limit at the target's thresholds;
- `mdi-exit`: mdi-exit with rate adaptation (the figure the verdict quotes).

The planner adds what-ifs at the same thresholds: one more device of each kind present, and the source's uplink
halved. Everything lands in DIR/report.json; DIR/report.html shows it (pilot/report.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from mdiexit.config import ClusterConfig, load_cluster, write_cluster
from mdiexit.energyplan import plan_energy
from mdiexit.package import load_package
from mdiexit.planner import limit_at_thresholds, node_times
from mdiexit.policies.admission import FEASIBLE_UTILISATION
from mdiexit.sizing import device_kind, with_copies
from mdiexit.util import say, shown_path

OPTIONS = ("local", "fastest", "ddi-exit", "mdi-exit-fixed", "mdi-exit")
START_S = 8.0  # about what a run spends starting its nodes and draining: not part of its measured time
WARMUP_SHARE = 0.3  # of each option's time: rate adaptation climbs to its rate before throughput is counted


class PilotError(ValueError):
    """A pilot that cannot be run as asked. The message names the fix."""


def _say(msg: str) -> None:
    say("pilot", msg, clock=True)


def fastest_worker(cluster: ClusterConfig) -> str:
    """The worker whose device computes fastest (the smallest slowdown; the highest rated speed among equals)."""
    if not cluster.workers:
        raise PilotError("the cluster has no worker: a pilot compares sharing the work with keeping it at the source")
    return min(cluster.workers, key=lambda n: (n.slowdown, -(n.rated_gmacs or 0.0))).name


def option_cluster(cluster: ClusterConfig, option: str) -> tuple[ClusterConfig, str]:
    """The cluster and mode an option runs on."""
    if option == "local":
        return _only(cluster, {cluster.source.name}), "mdi-exit"
    if option == "fastest":
        return _only(cluster, {cluster.source.name, fastest_worker(cluster)}), "ddi-exit"
    return cluster, "ddi-exit" if option == "ddi-exit" else "mdi-exit"


def _only(cluster: ClusterConfig, keep: set[str]) -> ClusterConfig:
    """The cluster reduced to the nodes ``keep``, each with the neighbours it had among them."""
    nodes = tuple(n for n in cluster.nodes if n.name in keep)
    neighbours = {n.name: tuple(b for b in cluster.neighbours_of(n.name) if b in keep) for n in nodes}
    return dataclasses.replace(cluster, nodes=nodes, neighbours=neighbours)


def run_pilot(cluster_path: Path, out: Path, minutes: float = 4.0, target_accuracy: float | None = None) -> dict:
    from mdiexit.runtime.device import planner_costs
    from mdiexit.runtime.launch import RunOptions, run_cluster
    from mdiexit.runtime.report import write_results

    cluster = load_cluster(cluster_path)
    pkg = load_package(cluster.package, check_onnx=True)
    target = target_accuracy if target_accuracy is not None else pkg.manifest["tasks"][-1].get("val_accuracy", 1) - .01
    point = pkg.profile.for_target(target)
    duration = minutes * 60 / len(OPTIONS) - START_S
    if duration < 5:
        raise PilotError(f"--minutes {minutes:g}: {len(OPTIONS)} options need at least "
                         f"{len(OPTIONS) * (START_S + 5) / 60:.1f} minutes")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    costs = planner_costs(pkg, cluster)
    limit = limit_at_thresholds(cluster, pkg, "mdi-exit", costs)(point.thresholds) or 0.0
    _say(f"{shown_path(cluster_path)}: {len(cluster.nodes)} nodes; target accuracy {target:.3f} (thresholds "
         f"{list(point.thresholds)}); planner's limit {limit:.0f} items/s; {len(OPTIONS)} options of {duration:.0f} s")
    options = {}
    started = time.monotonic()
    for i, option in enumerate(OPTIONS):
        sub, mode = option_cluster(cluster, option)
        path = write_cluster(out / "runs" / f"{option}.yaml", sub, mode=mode)
        fixed = option == "mdi-exit-fixed"
        opts = RunOptions(mode=mode, rate=max(1.0, FEASIBLE_UTILISATION * limit) if fixed else 50.0,
                          duration_s=duration, warmup_s=WARMUP_SHARE * duration, live=False,
                          admission="fixed" if fixed else "rate", target_accuracy=target,
                          thresholds=point.thresholds if fixed else None)
        _say(f"[{i + 1}/{len(OPTIONS)}] {option} ({mode} on {len(sub.nodes)} node(s), "
             f"{'fixed rate ' + format(opts.rate, '.0f') + '/s' if fixed else 'rate adaptation'})")
        result = run_cluster(path, opts)
        write_results(result, out / "runs" / option)
        s = result.summary
        options[option] = {"mode": mode, "nodes": [n.name for n in sub.nodes], "admission": opts.admission,
                           "throughput_per_s": s["throughput_per_s"], "accuracy": s["accuracy"],
                           "bytes_per_item": s["bytes_per_item"], "joules_per_item": s.get("joules_per_item"),
                           "p50_ms": s["latency_ms"]["p50"], "p95_ms": s["latency_ms"]["p95"], "lost": s["lost"],
                           "rejected": s["rejected"], "completed": s["completed"]}
        o = options[option]
        joules = f"{o['joules_per_item']:.3f} J/item" if o["joules_per_item"] is not None else "no power model"
        left = (time.monotonic() - started) / (i + 1) * (len(OPTIONS) - i - 1)
        _say(f"    {o['throughput_per_s']:.1f} items/s at accuracy {o['accuracy']:.3f}, {o['bytes_per_item']:.0f} "
             f"bytes/item, {joules}, p95 {o['p95_ms']:.0f} ms; about {left / 60:.1f} min left")
    report = {"site": site_of(cluster, cluster_path), "target_accuracy": target, "thresholds": list(point.thresholds),
              "planner_limit_per_s": limit, "seconds_per_option": duration, "options": options,
              "what_if": what_ifs(cluster, pkg, costs, point.thresholds, limit),
              "energy_what_if": energy_what_if(cluster, pkg, costs, point.thresholds, options["mdi-exit-fixed"])}
    report["verdict"] = verdict(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    from mdiexit.pilot.report import write_html

    html = write_html(report, out / "report.html")
    _say(f"wrote {out / 'report.json'} and {html}")
    _say(report["verdict"])
    return report


def site_of(cluster: ClusterConfig, path: Path) -> dict:
    return {"cluster": shown_path(path), "package": shown_path(cluster.package),
            "nodes": [{"name": n.name, "role": n.role, "slowdown": n.slowdown, "bandwidth_mbps": n.bandwidth_mbps,
                       "latency_ms": n.latency_ms, "power": n.power} for n in cluster.nodes]}


def what_ifs(cluster: ClusterConfig, pkg, costs, thresholds: tuple[float, ...], now: float) -> list[dict]:
    """The planner's limit with one more device of each kind present, and with the source's uplink halved."""
    rows = []
    kinds: dict[tuple, str] = {}
    for n in cluster.workers:
        kinds.setdefault(device_kind(n), n.name)
    for name in kinds.values():
        grown = with_copies(cluster, name, 1)
        rows.append({"what": f"one more device like {name}",
                     "limit_per_s": limit_at_thresholds(grown, pkg, "mdi-exit", costs)(thresholds)})
    src = cluster.source
    if src.bandwidth_mbps is not None:
        halved = dataclasses.replace(src, bandwidth_mbps=src.bandwidth_mbps / 2)
        slower = dataclasses.replace(cluster, nodes=tuple(halved if n is src else n for n in cluster.nodes))
        rows.append({"what": f"the source's uplink halved ({src.bandwidth_mbps:g} -> {src.bandwidth_mbps / 2:g} "
                             "Mbit/s)", "limit_per_s": limit_at_thresholds(slower, pkg, "mdi-exit", costs)(thresholds)})
    for r in rows:
        r["change"] = (r["limit_per_s"] or 0.0) / now - 1 if now else None
    return rows


def energy_what_if(cluster: ClusterConfig, pkg, costs, thresholds: tuple[float, ...], measured: dict) -> dict | None:
    """The planner's fewest joules per item (`objective: energy`, energyplan.plan_energy) at the rate the fixed-rate
    mdi-exit option carried, beside what it measured; None without power models."""
    if measured.get("joules_per_item") is None or all(n.power is None for n in cluster.nodes):
        return None
    rate = measured["throughput_per_s"]
    try:
        plan = plan_energy(cluster, pkg, "mdi-exit", pkg.profile.exit_mix(thresholds), node_times(cluster, costs),
                           rate)
    except ValueError:  # past the planned limit: no placement carries it
        return None
    return {"rate_per_s": rate, "measured_j": measured["joules_per_item"], "fewest_j": plan.joules_per_item,
            "change": plan.joules_per_item / measured["joules_per_item"] - 1}


def verdict(report: dict) -> str:
    """The report's conclusion in plain words."""
    o = report["options"]
    mdi, best_other = o["mdi-exit"], max((k for k in o if k != "mdi-exit"), key=lambda k: o[k]["throughput_per_s"])
    parts = [f"At accuracy {report['target_accuracy']:.3f}, mdi-exit served {mdi['throughput_per_s']:.0f} items/s: "
             f"{mdi['throughput_per_s'] / max(o['local']['throughput_per_s'], 1e-9):.1f}x the source alone"]
    if best_other != "local":
        parts.append(f"{mdi['throughput_per_s'] / max(o[best_other]['throughput_per_s'], 1e-9):.2f}x the best other "
                     f"option ({best_other})")
    text = ", ".join(parts) + "."
    if mdi["joules_per_item"] is not None and o["ddi-exit"]["joules_per_item"]:
        change = mdi["joules_per_item"] / o["ddi-exit"]["joules_per_item"] - 1
        text += f" It spends {mdi['joules_per_item']:.3f} J per item ({change:+.0%} against ddi-exit)."
    hourly_gb = mdi["bytes_per_item"] * mdi["throughput_per_s"] * 3600 / 1e9
    text += f" It sends {mdi['bytes_per_item'] / 1e3:.1f} kB per item, {hourly_gb:.2f} GB an hour at that rate."
    energy = report.get("energy_what_if")
    if energy is not None and energy["change"] < -0.03:
        text += (f" At {energy['rate_per_s']:.0f} items/s, `objective: energy` could spend as little as "
                 f"{energy['fewest_j']:.3f} J per item ({energy['change']:+.0%} against the measured "
                 f"{energy['measured_j']:.3f}).")
    best = max(report["what_if"], key=lambda r: r["limit_per_s"] or 0.0, default=None)
    if best is not None and best.get("change") is not None and best["change"] > 0.02:
        text += f" The planner's best next step: {best['what']} (+{best['change']:.0%} capacity)."
    return text
