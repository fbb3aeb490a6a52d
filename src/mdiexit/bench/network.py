"""`mdiexit bench network`: mdi-exit with rate adaptation while the source's uplink drops hard and recovers
(congested Wi-Fi), priced three ways by the offloading rule:

- ``measured``: online link estimates (``links: measured``), seeded with the cluster file's bandwidths;
- ``static``: the cluster file's bandwidths as they are (``links: configured``): the rule never hears of the drop;
- ``unlimited``: no bandwidth given anywhere (``links: configured``): every link is priced as unlimited.

The emulated truth is the same in all three: every node keeps its file's bandwidth, except that the source's
uplink follows ``[[0, high], [drop_at, low], [back_at, high]]``. Reported per run and phase (before / congested /
after, by admission time; throughput by completion time): results per second, p95 latency, and accuracy within
the deadline (a late or missing result counts as wrong). ``tracking_s``: for each change, the time until the
measured run's estimate of the source's uplink (the median over its links) is within 20 % of the true rate.
``limit_per_s``: the planner's physical limit (batch 1) in that phase, at the exit mix the run reached there and
the source's true uplink rate. Also: the bytes the estimation added to the wire, as a fraction of all bytes sent,
and a plot. With ``repeats``
the variants take turns that many times; each phase's figures are then the medians over the runs (``every_run``
keeps them all: the spread between two runs of one variant was larger than the difference between variants).
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mdiexit.config import load_cluster, write_cluster
from mdiexit.package import load_package
from mdiexit.runtime.launch import LiveRun, RunOptions, run_cluster
from mdiexit.runtime.report import write_results

VARIANTS = {"measured": ("measured", True), "static": ("configured", True), "unlimited": ("configured", False)}
PHASES = ("before", "congested", "after")
TRACKING_TOLERANCE = 0.2


def variant_cluster(cluster_path: Path, out: Path, variant: str, schedule: list[list[float]]) -> Path:
    """The cluster file of one variant: the source's uplink follows ``schedule``; ``unlimited`` keeps every node's
    emulated rate as a one-entry schedule and configures no bandwidth."""
    links, configured = VARIANTS[variant]
    cfg = load_cluster(cluster_path)
    src = cfg.source.name

    def node(n: dict) -> dict:
        truth = schedule if n["name"] == src else \
            ([[0.0, n["bandwidth_mbps"]]] if n.get("bandwidth_mbps") is not None else None)
        return {"bandwidth_schedule": truth,
                "bandwidth_mbps": (schedule[0][1] if n["name"] == src else n.get("bandwidth_mbps")) if configured
                else None}

    return write_cluster(out / f"{variant}.yaml", cfg, every_node=node, links=links)


def limit_at(cluster_path: Path, folder: Path, mbps: float) -> Callable[[list[float]], float]:
    """Exit mix -> the planner's limit for mdi-exit (batch 1, the host profile every node emulates) with the source's
    uplink at ``mbps``."""
    from mdiexit.planner import node_times, plan_throughput
    from mdiexit.runtime.device import planner_costs

    src = load_cluster(cluster_path).source.name
    cluster = load_cluster(write_cluster(folder / f"limit-{mbps:g}.yaml", cluster_path, every_node=lambda n: (
        {"bandwidth_mbps": mbps, "bandwidth_schedule": None} if n["name"] == src else {})))
    pkg = load_package(cluster.package)
    times = node_times(cluster, planner_costs(pkg, cluster))
    return lambda mix: plan_throughput(cluster, pkg, "mdi-exit", mix, times).throughput_per_s


def phase_figures(records: list, start: float, windows: dict[str, tuple[float, float]], deadline_s: float,
                  limits: dict[str, Callable[[list[float]], float]] | None = None, num_exits: int = 0) -> dict:
    """Per phase: results per second (by completion), p95 latency and accuracy within the deadline (by admission),
    and with ``limits`` (phase -> exit mix -> items/s) the physical limit at the exit mix of the phase's results."""
    out = {}
    for phase, (t0, t1) in windows.items():
        admitted = [r for r in records if t0 <= r.admitted_at - start < t1]
        done = [r for r in admitted if r.done_at is not None]
        finished = sum(1 for r in records if r.done_at is not None and t0 <= r.done_at - start < t1)
        lat = [r.done_at - r.admitted_at for r in done]
        on_time = sum(r.label == r.truth and r.done_at - r.admitted_at <= deadline_s for r in done)
        out[phase] = {"throughput_per_s": finished / max(t1 - t0, 1e-9),
                      "p95_ms": float(np.percentile(lat, 95) * 1000) if lat else None,
                      "accuracy_within_deadline": on_time / len(admitted) if admitted else None,
                      "admitted": len(admitted)}
        if limits and done:
            mix = np.bincount([r.exit - 1 for r in done], minlength=num_exits) / len(done)
            out[phase]["limit_per_s"] = limits[phase](mix.tolist())
    return out


def tracking(series: list[tuple[float, float | None]], changes: list[tuple[float, float]],
             tolerance: float = TRACKING_TOLERANCE) -> list[dict]:
    """For each (time, true bit/s) change after the first: seconds until the estimate is within ``tolerance``."""
    out = []
    for at, truth in changes[1:]:
        hit = next((t for t, est in series if t >= at and est is not None and abs(est - truth) <= tolerance * truth),
                   None)
        out.append({"at_s": at, "true_mbps": truth / 1e6, "tracking_s": None if hit is None else hit - at})
    return out


def _watch(series: list, stop: threading.Event, period_s: float = 0.1):
    """An on_ready hook: sample the source's uplink estimate (median over its links) until the run ends."""
    def watch(live: LiveRun) -> None:
        start = live.source.run_start
        while not stop.is_set() and live.source.phase in ("starting", "admitting"):
            t = live.source.clock.now()
            figures = live.source.loop.ask(lambda t=t: live.source.node.meter.figures(t))  # the loop owns the meter
            rates = [bw for bw, _, _ in figures.values() if bw]
            series.append((t - start, statistics.median(rates) if rates else None))
            time.sleep(period_s)
    return watch


def _per_second(records: list, start: float, duration_s: float) -> list[float]:
    bins = np.arange(0, int(duration_s) + 1)
    counts, _ = np.histogram([r.done_at - start for r in records if r.done_at is not None], bins=bins)
    return counts.astype(float).tolist()


def median_figures(runs: list[dict]) -> dict:
    """Per phase and figure, the median over repeated runs (figures a run could not give, None, are left out)."""
    out: dict[str, dict] = {}
    for phase in runs[0]:
        out[phase] = {}
        for fig in runs[0][phase]:
            vals = [r[phase][fig] for r in runs if r[phase][fig] is not None]
            out[phase][fig] = statistics.median(vals) if vals else None
    return out


def bench_network(cluster: Path, out: Path, *, duration_s: float, drop_at_s: float, back_at_s: float,
                  high_mbps: float, low_mbps: float, warmup_s: float,  # the scenario: its defaults are the CLI's
                  deadline_ms: float = 1000.0, target_accuracy: float | None = None,
                  variants: tuple[str, ...] = tuple(VARIANTS), repeats: int = 1) -> dict:
    if not warmup_s < drop_at_s < back_at_s < duration_s:
        raise ValueError(f"expected warm-up < drop < back < duration, got {warmup_s}, {drop_at_s}, {back_at_s}, "
                         f"{duration_s} s")
    schedule = [[0.0, high_mbps], [drop_at_s, low_mbps], [back_at_s, high_mbps]]
    windows = {"before": (warmup_s, drop_at_s), "congested": (drop_at_s, back_at_s), "after": (back_at_s, duration_s)}
    runs_dir = out.parent / out.stem
    runs_dir.mkdir(parents=True, exist_ok=True)
    every: dict[str, list[dict]] = {v: [] for v in variants}
    series, per_second, overhead, tracked = {}, {}, {}, []
    changes = [(t, mbps * 1e6) for t, mbps in schedule]
    rates = {"before": high_mbps, "congested": low_mbps, "after": high_mbps}
    at = {mbps: limit_at(cluster, runs_dir, mbps) for mbps in set(rates.values())}
    limits = {phase: at[mbps] for phase, mbps in rates.items()}
    num_exits = load_package(load_cluster(cluster).package).num_tasks
    for i in range(repeats):  # the variants take turns, so that a drift of the host does not favour one
        for variant in variants:
            path = variant_cluster(cluster, runs_dir, variant, schedule)
            print(f"  {variant}{f' ({i + 1}/{repeats})' if repeats > 1 else ''}: {duration_s:g} s, source uplink "
                  f"{high_mbps:g} -> {low_mbps:g} Mbit/s at {drop_at_s:g} s, back at {back_at_s:g} s", file=sys.stderr)
            stop, samples = threading.Event(), []
            opts = RunOptions(mode="mdi-exit", admission="rate", rate=50.0, duration_s=duration_s, warmup_s=warmup_s,
                              live=False, deadline_ms=deadline_ms, target_accuracy=target_accuracy,
                              drain_timeout_s=30.0)
            try:
                result = run_cluster(path, opts, on_ready=_watch(samples, stop))
            finally:
                stop.set()
            write_results(result, runs_dir / (variant if repeats == 1 else f"{variant}-{i + 1}"))
            records = list(result.ledger.records.values())
            start = min(r.admitted_at for r in records)
            every[variant].append(phase_figures(records, start, windows, deadline_ms / 1000, limits, num_exits))
            if variant == "measured":
                tracked += [{**c, "run": i + 1} for c in tracking(samples, changes)]
            if i == 0:  # the plot shows the first round
                series[variant], per_second[variant] = samples, _per_second(records, start, duration_s)
            o = result.summary["estimation_overhead"]
            if o["fraction_of_bytes_sent"] >= overhead.get(variant, {}).get("fraction_of_bytes_sent", -1.0):
                overhead[variant] = o  # the largest over the rounds
    runs = {v: median_figures(r) for v, r in every.items()}
    times = [c["tracking_s"] for c in tracked]
    report = {
        "runs": runs,
        "repeats": repeats,
        "every_run": every if repeats > 1 else None,
        "tracking_s": None if not times or None in times else max(times),
        "tracking": tracked,
        "estimation_overhead": overhead,
        "config": {"cluster": str(cluster), "mode": "mdi-exit", "admission": "rate", "duration_s": duration_s,
                   "warmup_s": warmup_s, "source_uplink_schedule_mbps": schedule, "deadline_ms": deadline_ms,
                   "target_accuracy": target_accuracy, "tracking_tolerance": TRACKING_TOLERANCE, "repeats": repeats,
                   "phases_s": windows, "variants": {v: dict(zip(("links", "bandwidth_configured"), VARIANTS[v],
                                                                 strict=True)) for v in variants},
                   "command": " ".join(sys.argv)},
        "estimate_series": {v: [[round(t, 2), bw] for t, bw in s] for v, s in series.items()},
        "results_per_second": per_second,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    _plot(report, out.with_suffix(".png"))
    print_network(report)
    return report


def print_network(r: dict) -> None:
    c = r["config"]
    print(f"mdi-exit, rate adaptation, {c['cluster']}: source uplink {c['source_uplink_schedule_mbps']} (t_s, Mbit/s); "
          f"accuracy within {c['deadline_ms']:.0f} ms" + (f"; medians of {r['repeats']} runs" if r.get("every_run")
                                                          else ""))
    print(f"{'links':>10} {'phase':>10} {'items/s':>8} {'p95 ms':>8} {'acc<=deadline':>13} {'limit/s':>8}")
    for variant, phases in r["runs"].items():
        for phase, f in phases.items():
            p95 = "-" if f["p95_ms"] is None else f"{f['p95_ms']:.0f}"
            acc = "-" if f["accuracy_within_deadline"] is None else f"{f['accuracy_within_deadline']:.3f}"
            limit = "-" if f.get("limit_per_s") is None else f"{f['limit_per_s']:.1f}"
            print(f"{variant:>10} {phase:>10} {f['throughput_per_s']:>8.1f} {p95:>8} {acc:>13} {limit:>8}")
    for t in r["tracking"]:
        print(f"  estimate within {TRACKING_TOLERANCE:.0%} of {t['true_mbps']:g} Mbit/s: {t['tracking_s']} s after "
              f"the change at {t['at_s']:g} s" + (f" (run {t['run']})" if r.get("every_run") else ""))
    for variant, o in r["estimation_overhead"].items():
        print(f"  {variant}: estimation added {o['bytes']} bytes, {o['fraction_of_bytes_sent']:.2%} of all bytes sent")


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = r["config"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    sched = c["source_uplink_schedule_mbps"]
    xs = [t for t, _ in sched] + [c["duration_s"]]
    top.step(xs, [m for _, m in sched] + [sched[-1][1]], where="post", color="k", label="true rate")
    for variant, s in r["estimate_series"].items():
        if variant == "measured":
            top.plot([t for t, _ in s], [bw / 1e6 if bw else np.nan for _, bw in s], color="tab:blue",
                     label="estimate (measured run, median over links)")
    top.set_yscale("log")
    top.set_ylabel("source uplink (Mbit/s)")
    top.legend(fontsize=8)
    for variant, counts in r["results_per_second"].items():
        bottom.plot(np.arange(len(counts)) + 0.5, counts, label=variant)
    for t, _ in sched[1:]:
        for ax in (top, bottom):
            ax.axvline(t, color="gray", ls="--", lw=1)
    bottom.set_xlabel("time since admission started (s)")
    bottom.set_ylabel("results per second")
    bottom.legend(fontsize=8)
    top.set_title(f"mdi-exit with rate adaptation: {Path(c['cluster']).name}, the source's uplink drops and recovers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
