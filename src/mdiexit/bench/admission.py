"""`mdiexit bench admission`: both admission strategies against fixed-rate baselines, in one command.

Rate adaptation (target accuracy A = final-exit test accuracy - 1 point unless given):
  one mdi-exit run with `--admission rate` (timeline kept), then rate searches, side by side, of mdi-exit
  at the *same* thresholds with a fixed rate (does the controller find the capacity?), of mdi and ddi-exit.
Threshold adaptation: mdi-exit with `--admission thresholds` at 2x mdi's capacity and a 1 s deadline,
  beside mdi and mdi-static at the same rate.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from mdiexit.bench.paper import say, search_mode, summary_row, test_accuracies
from mdiexit.bench.ratesearch import Criterion
from mdiexit.config import load_cluster
from mdiexit.data import load_test_split
from mdiexit.evaluate import all_exit_logits, evaluate_logits
from mdiexit.package import load_package
from mdiexit.plot import plot_timeline
from mdiexit.runtime.launch import RunOptions, run_cluster
from mdiexit.runtime.report import write_results


def settle_time(timeline: list[dict], steady_from_s: float, band: float = 0.15, smooth_s: float = 2.0) -> float | None:
    """First time after which λ, averaged over the last `smooth_s`, stays within +-band of its steady mean."""
    steady = [r["rate"] for r in timeline if r["t_s"] >= steady_from_s]
    if not steady:
        return None
    mean = statistics.fmean(steady)
    settled = None
    for row in timeline:
        recent = [r["rate"] for r in timeline if row["t_s"] - smooth_s < r["t_s"] <= row["t_s"]]
        inside = abs(statistics.fmean(recent) - mean) <= band * mean
        if inside and settled is None:
            settled = row["t_s"]
        elif not inside:
            settled = None
    return settled


def accuracy_at(package: Path, thresholds: tuple[float, ...]) -> float:
    pkg = load_package(package)
    test = load_test_split(pkg, None)
    logits = all_exit_logits(pkg, test.images, threads=2, batch=500, progress=False)
    return evaluate_logits(pkg, logits, test.labels, list(thresholds))["accuracy"]


def bench_admission(cluster: Path, out: Path, duration_s: float = 60.0, probe_s: float = 6.0, drain_s: float = 5.0,
                    target_accuracy: float | None = None) -> dict:
    c = load_cluster(cluster)
    final_acc, default_acc = test_accuracies(c.package, None)
    target = target_accuracy if target_accuracy is not None else final_acc - 0.01
    say(f"final-exit test accuracy {final_acc:.4f}; target A = {target:.4f}")
    out.mkdir(parents=True, exist_ok=True)

    say("rate adaptation run")
    steady_from = duration_s / 2
    ra = run_cluster(cluster, RunOptions(mode="mdi-exit", rate=50.0, duration_s=duration_s, warmup_s=steady_from,
                                         live=False, admission="rate", target_accuracy=target))
    write_results(ra, out / "rate_adaptation")
    plot_timeline(out / "rate_adaptation")
    thresholds = tuple(ra.summary["config"]["thresholds"])
    ra_row = {**summary_row(ra.summary), "thresholds": list(thresholds),
              "settle_s": settle_time(ra.timeline, steady_from), "steady_window_s": [steady_from, duration_s]}
    acc_at_thresholds = accuracy_at(c.package, thresholds)

    crit = Criterion(target, expected_accuracy=acc_at_thresholds)
    start = ra.summary["throughput_per_s"] / 2
    fixed, fixed_log = search_mode(cluster, "mdi-exit", "mdi-exit, fixed rate", crit, start, probe_s, drain_s,
                                   thresholds=thresholds)
    mdi, mdi_log = search_mode(cluster, "mdi", "mdi", Criterion(target, expected_accuracy=final_acc), 20.0, probe_s,
                               drain_s)
    ddi_exit, ddi_log = search_mode(cluster, "ddi-exit", "ddi-exit", Criterion(target, expected_accuracy=default_acc),
                                    start, probe_s, drain_s)

    rate2 = round(2 * (mdi["rate"] or 10.0), 1)
    say(f"threshold adaptation at {rate2}/s (2x mdi's capacity), deadline 1000 ms")
    ta = run_cluster(cluster, RunOptions(mode="mdi-exit", rate=rate2, duration_s=duration_s / 1.5, warmup_s=5.0,
                                         live=False, admission="thresholds", deadline_ms=1000.0,
                                         drain_timeout_s=drain_s))
    write_results(ta, out / "threshold_adaptation")
    plot_timeline(out / "threshold_adaptation")
    fixed_rate_runs = {}
    for mode in ("mdi", "mdi-static"):
        s = run_cluster(cluster, RunOptions(mode=mode, rate=rate2, duration_s=duration_s / 1.5, warmup_s=5.0,
                                            live=False, deadline_ms=1000.0, drain_timeout_s=drain_s)).summary
        fixed_rate_runs[mode] = s
    backlog = [r["max_backlog_s"] for r in ta.timeline]
    result = {
        "target_accuracy": target, "final_test_accuracy": final_acc,
        "rate_adaptation": {**ra_row, "test_accuracy_at_thresholds": acc_at_thresholds,
                            "fixed_rate_search": fixed, "vs_fixed": ra_row["throughput_per_s"] / max(
                                fixed["throughput_per_s"], 1e-9),
                            "mdi": mdi, "vs_mdi": ra_row["throughput_per_s"] / max(mdi["throughput_per_s"], 1e-9),
                            "ddi_exit": ddi_exit,
                            "vs_ddi_exit": ra_row["throughput_per_s"] / max(ddi_exit["throughput_per_s"], 1e-9)},
        "threshold_adaptation": {
            "rate": rate2, "deadline_ms": 1000.0,
            "mdi-exit": {"accuracy_within_deadline": ta.summary["accuracy_within_deadline"],
                         "accuracy": ta.summary["accuracy"], "p95_ms": ta.summary["latency_ms"]["p95"],
                         "max_backlog_s_p95": float(np.percentile(backlog, 95)) if backlog else None,
                         "max_backlog_s_max": max(backlog) if backlog else None,
                         "operating_points": sorted({r["operating_point"] for r in ta.timeline})},
            **{m: {"accuracy_within_deadline": s["accuracy_within_deadline"], "accuracy": s["accuracy"],
                   "p95_ms": s["latency_ms"]["p95"]} for m, s in fixed_rate_runs.items()}},
        "searches": {"mdi-exit fixed": fixed_log, "mdi": mdi_log, "ddi-exit": ddi_log},
    }
    (out / "admission.json").write_text(json.dumps(result, indent=1))
    print_admission(result)
    return result


def print_admission(r: dict) -> None:
    ra, ta = r["rate_adaptation"], r["threshold_adaptation"]
    print(f"rate adaptation, target accuracy {r['target_accuracy']:.4f}, thresholds {ra['thresholds']}:")
    print(f"  settled after {ra['settle_s']} s; steady window {ra['steady_window_s']} s: "
          f"{ra['throughput_per_s']:.1f} items/s, accuracy {ra['accuracy']:.4f}, p95 {ra['p95_ms']:.0f} ms")
    print(f"  best fixed rate at the same thresholds: {ra['fixed_rate_search']['throughput_per_s']:.1f} items/s "
          f"-> controller at {ra['vs_fixed']:.0%} of it")
    print(f"  mdi {ra['mdi']['throughput_per_s']:.1f} items/s -> {ra['vs_mdi']:.2f}x;  "
          f"ddi-exit {ra['ddi_exit']['throughput_per_s']:.1f} items/s -> {ra['vs_ddi_exit']:.2f}x")
    print(f"threshold adaptation at {ta['rate']}/s, accuracy within {ta['deadline_ms']:.0f} ms:")
    for mode in ("mdi-exit", "mdi", "mdi-static"):
        print(f"  {mode:>10}: {ta[mode]['accuracy_within_deadline']:.4f} (accuracy {ta[mode]['accuracy']:.4f}, "
              f"p95 {ta[mode]['p95_ms']:.0f} ms)")
    print(f"  mdi-exit's largest backlog: p95 {ta['mdi-exit']['max_backlog_s_p95']:.2f} s, "
          f"max {ta['mdi-exit']['max_backlog_s_max']:.2f} s")
