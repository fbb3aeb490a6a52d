"""`mdiexit bench chaos`: mdi-exit with rate adaptation while workers are killed, hung, leave and come back.

A seeded schedule, one event every `period_s`: `kill -9` of a random worker (restarted `down_s` later), one
SIGSTOP (continued `down_s` later), one graceful leave (SIGTERM; the worker is started again `down_s` later),
cycling, and in the last slot a new device that joins with the source's address alone. Reported: lost and
duplicates (both must be 0), items re-dispatched, throughput in the `down_s` before, during and after each
event, and the time from each event until the throughput (1-s bins, 2-s moving average) is back to 90 % of
what it was before. Plot: throughput over time, events marked.
"""

from __future__ import annotations

import json
import random
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mdiexit.runtime.launch import LiveRun, RunOptions, run_cluster
from mdiexit.runtime.report import write_results

EVENTS = ("kill", "stop", "kill", "leave")  # the cycle; the nodes hit are drawn with the seed


def _schedule(workers: list[str], duration_s: float, period_s: float, seed: int) -> list[dict]:
    """One event every `period_s`, cycling through EVENTS; the last slot is a new device joining."""
    rng = random.Random(seed)
    out, t, i = [], period_s, 0
    while t + period_s <= duration_s:
        out.append({"at_s": t, "kind": EVENTS[i % len(EVENTS)], "node": rng.choice(workers)})
        t += period_s
        i += 1
    if out:
        out[-1] = {"at_s": out[-1]["at_s"], "kind": "join", "node": "newcomer"}
    return out


def _drive(schedule: list[dict], down_s: float, log: list[dict], join_port: int, join_slowdown: float):
    def action(live: LiveRun) -> None:
        start = live.source.run_start
        for ev in schedule:
            _sleep_until(start + ev["at_s"], live)
            name, kind = ev["node"], ev["kind"]
            if kind == "join":
                live.join(name, join_port, slowdown=join_slowdown)
                log.append({**ev, "at_s": time.monotonic() - start})
                print(f"  t={ev['at_s']:.0f} s: {name} joins", file=sys.stderr)
                continue
            sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "leave": signal.SIGTERM}[kind]
            live.signal(name, sig)
            log.append({**ev, "at_s": time.monotonic() - start})
            print(f"  t={ev['at_s']:.0f} s: {kind} {name}", file=sys.stderr)
            _sleep_until(start + ev["at_s"] + down_s, live)
            if kind == "stop":
                live.signal(name, signal.SIGCONT)
            else:
                live.procs[name].wait(30)
                live.restart(name)
            log.append({"at_s": time.monotonic() - start, "kind": "back", "node": name})
    return action


def _sleep_until(t: float, live: LiveRun) -> None:
    while time.monotonic() < t and live.source.phase in ("starting", "admitting"):
        time.sleep(0.05)


def throughput_series(done_at_s: list[float], duration_s: float) -> np.ndarray:
    """Results per second in 1-s bins over the admission period."""
    bins = np.arange(0, int(duration_s) + 1)
    counts, _ = np.histogram([t for t in done_at_s if 0 <= t < bins[-1]], bins=bins)
    return counts.astype(float)


def event_figures(series: np.ndarray, at_s: float, window_s: float) -> dict:
    t0 = int(at_s)
    before = series[max(0, t0 - int(window_s)):t0]
    during = series[t0:t0 + int(window_s)]
    after = series[t0 + int(window_s):t0 + 2 * int(window_s)]
    pre = float(before.mean()) if len(before) else float("nan")
    smooth = np.convolve(series, np.ones(2) / 2, mode="same")
    recovered = next((t - at_s for t in range(t0 + 1, len(series)) if smooth[t] >= 0.9 * pre), None)
    return {"before_per_s": pre, "during_per_s": float(during.mean()) if len(during) else None,
            "after_per_s": float(after.mean()) if len(after) else None,
            "recovery_s": None if recovered is None else float(max(0.0, recovered))}


def bench_chaos(cluster: Path, out: Path, duration_s: float = 140.0, period_s: float = 20.0, down_s: float = 10.0,
                seed: int = 0, target_accuracy: float | None = None) -> dict:
    from mdiexit.config import load_cluster
    from mdiexit.runtime.ports import free_ports

    cfg = load_cluster(cluster)
    workers = [w.name for w in cfg.workers]
    schedule = _schedule(workers, duration_s, period_s, seed)
    log: list[dict] = []
    opts = RunOptions(admission="rate", duration_s=duration_s, warmup_s=10.0, live=True, rate=50.0,
                      target_accuracy=target_accuracy)
    slowdown = statistics.median(w.slowdown for w in cfg.workers)
    result = run_cluster(cluster, opts, on_ready=_drive(schedule, down_s, log, free_ports(1)[0], slowdown))
    out.mkdir(parents=True, exist_ok=True)
    write_results(result, out / "run")
    s = result.summary
    start = min(r.admitted_at for r in result.ledger.records.values())
    done = [r.done_at - start for r in result.ledger.records.values() if r.done_at is not None]
    series = throughput_series(done, duration_s)
    events = [{**e, **event_figures(series, e["at_s"], down_s)} for e in log if e["kind"] != "back"]
    recoveries = [e["recovery_s"] for e in events if e["recovery_s"] is not None and e["kind"] != "join"]
    report = {
        "lost": s["lost"], "duplicates": s["duplicates"], "failed": s["failed"], "admitted": s["admitted"],
        "redispatched": s["redispatched"], "redundant_results": s["redundant_results"],
        "throughput_per_s": s["throughput_per_s"], "accuracy": s["accuracy"],
        "median_recovery_s": statistics.median(recoveries) if recoveries else None,
        "unrecovered_events": sum(e["recovery_s"] is None for e in events if e["kind"] != "join"),
        "joined_tasks_run": s["per_node"].get("newcomer", {}).get("tasks_run", {}),
        "events": events, "node_failures": s["node_failures"], "throughput_series": series.tolist(),
        "config": {"cluster": str(cluster), "duration_s": duration_s, "period_s": period_s, "down_s": down_s,
                   "seed": seed, "schedule": schedule, "command": " ".join(sys.argv)},
    }
    (out / "chaos.json").write_text(json.dumps(report, indent=1))
    _plot(series, log, out / "chaos.png")
    print(f"lost {s['lost']}, duplicates {s['duplicates']}, failed {s['failed']}, re-dispatched {s['redispatched']}, "
          f"median recovery to 90 %: {report['median_recovery_s']} s")
    for e in events:
        print(f"  {e['at_s']:6.1f} s {e['kind']:>5} {e['node']:>10}: before {e['before_per_s']:.1f}, during "
              f"{e['during_per_s']:.1f}, after {e['after_per_s'] or float('nan'):.1f} items/s; recovered in "
              f"{e['recovery_s']} s")
    return report


def _plot(series: np.ndarray, log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(np.arange(len(series)) + 0.5, series, color="tab:blue", label="results per second")
    colours = {"kill": "tab:red", "stop": "tab:orange", "leave": "tab:purple", "join": "tab:green",
               "back": "tab:gray"}
    for e in log:
        ax.axvline(e["at_s"], color=colours.get(e["kind"], "k"), ls="--" if e["kind"] == "back" else "-", lw=1)
        if e["kind"] != "back":
            ax.text(e["at_s"], ax.get_ylim()[1] * 0.95, f" {e['kind']} {e['node']}", fontsize=7, rotation=90,
                    va="top", color=colours.get(e["kind"], "k"))
    ax.set_xlabel("time since admission started (s)")
    ax.set_ylabel("items/s")
    ax.set_title("mdi-exit under failures (dashed: the node is back)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
