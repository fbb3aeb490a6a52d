"""`mdiexit bench join`: what a device joining a busy cluster costs the data. The cluster runs at a fixed rate; at
`at_s` a new device joins with the source's address alone (runtime.launch.LiveRun.join) and receives the cluster
view and the model package over the source's uplink. Reported: rejected and lost items, and the latency of the
items admitted before the join, in the `window_s` after it, and after that. Writes OUT (JSON).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdiexit import util
from mdiexit.runtime.launch import run_cluster
from mdiexit.runtime.options import RunOptions
from mdiexit.runtime.ports import free_ports, on_free_ports


@dataclass
class JoinBenchOptions:
    rate: float = 600.0  # items/s offered
    duration_s: float = 30.0
    at_s: float = 9.0  # when the device joins, from the run's start
    window_s: float = 8.0  # "during": the items admitted this long after the join began
    slowdown: float = 20.0  # the newcomer: a Jetson-like device on a 40 Mbit/s link
    bandwidth_mbps: float = 40.0
    latency_ms: float = 3.0


def say(msg: str) -> None:
    util.say("bench", msg, clock=True)


def bench_join(cluster_path: Path, out: Path, o: JoinBenchOptions) -> dict:
    with tempfile.TemporaryDirectory(prefix="mdiexit-join-") as d:
        cluster = on_free_ports(cluster_path, Path(d) / "cluster.yaml")
        port = free_ports(1)[0]
        began: dict[str, float] = {}

        def on_ready(live) -> None:
            def later() -> None:
                time.sleep(o.at_s)
                began["t"] = time.monotonic()
                live.join("newcomer", port, slowdown=o.slowdown, bandwidth_mbps=o.bandwidth_mbps,
                          latency_ms=o.latency_ms)
            threading.Thread(target=later, daemon=True).start()

        say(f"{cluster_path} at {o.rate:g} items/s for {o.duration_s:g} s; a device joins at {o.at_s:g} s")
        res = run_cluster(cluster, RunOptions(rate=o.rate, duration_s=o.duration_s, warmup_s=3.0, live=False),
                          on_ready=on_ready)
    s, records = res.summary, list(res.ledger.records.values())
    start = min(r.admitted_at for r in records)
    join_s = began["t"] - start if "t" in began else o.at_s

    def window(a: float, b: float) -> dict:
        lat = [r.done_at - r.admitted_at for r in records if r.done_at is not None and a <= r.admitted_at - start < b]
        return {"items": len(lat), "p95_ms": float(np.percentile(lat, 95) * 1000) if lat else None,
                "max_ms": float(max(lat) * 1000) if lat else None}

    joined = [e for e in s["node_failures"] if e["kind"] == "joined"]
    result = {"cluster": str(cluster_path), "options": vars(o), "offered": s["offered"], "rejected": s["rejected"],
              "lost": s["lost"], "throughput_per_s": s["throughput_per_s"], "joined_at_s": joined[0]["at_s"] if joined
              else None, "newcomer_tasks": sum(s["per_node"].get("newcomer", {}).get("tasks_run", {}).values()),
              "before": window(3.0, join_s), "during": window(join_s, join_s + o.window_s),
              "after": window(join_s + o.window_s, o.duration_s)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    say(f"rejected {result['rejected']} of {result['offered']}, lost {result['lost']}; p95 before "
        f"{result['before']['p95_ms']:.0f} ms, during {result['during']['p95_ms']:.0f} ms (max "
        f"{result['during']['max_ms']:.0f}), after {result['after']['p95_ms']:.0f} ms; the newcomer ran "
        f"{result['newcomer_tasks']} tasks. Wrote {out}")
    return result
