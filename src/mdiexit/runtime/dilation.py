"""Time dilation: emulate a cluster k times slower than it is, then read the results back in its own time.

A host that emulates five devices on two cores adds time of its own to every message: a thread that wakes late,
a process that waits for the GIL, ZeroMQ's transit. Devices and links emulated k times slower (every compute
time, latency, period and deadline x k, every bandwidth and rate / k) do the same work in k times the wall time,
so the host is k times less busy, and its own additions, which do not stretch, count k times less once the
results are read back (throughput x k, times / k). This is the time dilation of network emulators (Gupta et
al., "To Infinity and Beyond: Time-Warped Network Emulation", NSDI 2006). The price: k times the wall time.

    path = dilate_cluster("examples/edge4.yaml", 2.0, tmp / "edge4-x2.yaml")
    summary = undilate_summary(run_cluster(path, dilate_options(opts, 2.0)).summary, 2.0)

What stays in wall time: the runtime's own constants (the source's 100 ms control step, the link estimator's
windows), so a run with admission control is not exactly the same run dilated; fixed-rate runs are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from mdiexit.config import MAX_HEARTBEAT_MS, ConfigError, cluster_dict, load_cluster, write_cluster
from mdiexit.runtime.launch import RunOptions, run_cluster
from mdiexit.runtime.report import RunResult

CLUSTER_TIMES_MS = ("hysteresis_ms", "stale_after_ms", "heartbeat_ms", "dead_after_ms")
OPTION_TIMES_S = ("duration_s", "warmup_s", "drain_timeout_s")
OPTION_TIMES_MS = ("deadline_ms", "max_backlog_ms", "max_wait_ms", "target_backlog_ms")


def _check(k: float) -> None:
    if not k >= 1.0:
        raise ConfigError(f"dilation: expected a factor >= 1 (1 = none), got {k:g}")


def dilate_cluster(path: str | Path, k: float, out: Path) -> Path:
    """A copy of the cluster file at ``out``, every device and link k times slower and every period k times
    longer."""
    _check(k)
    data = cluster_dict(load_cluster(path))
    if data["heartbeat_ms"] * k > MAX_HEARTBEAT_MS:
        raise ConfigError(f"dilation {k:g}: heartbeat_ms {data['heartbeat_ms']:g} x {k:g} is over the "
                          f"{MAX_HEARTBEAT_MS:g} ms a node may wait between reports; use a dilation <= "
                          f"{MAX_HEARTBEAT_MS / data['heartbeat_ms']:g} or a shorter heartbeat_ms")
    for key in CLUSTER_TIMES_MS:
        data[key] *= k
    for n in data["nodes"]:
        n["slowdown"] *= k
        n["latency_ms"] = n.get("latency_ms", 0.0) * k
        for key in ("bandwidth_mbps", "rated_gmacs"):
            if n.get(key) is not None:
                n[key] /= k
        if n.get("bandwidth_schedule") is not None:
            n["bandwidth_schedule"] = [[t * k, mbps / k] for t, mbps in n["bandwidth_schedule"]]
    return write_cluster(out, data)


def dilate_options(opts: RunOptions, k: float) -> RunOptions:
    """The run options in dilated time: rates / k, durations and time limits x k."""
    _check(k)
    scaled = {f: getattr(opts, f) * k for f in OPTION_TIMES_S + OPTION_TIMES_MS if getattr(opts, f) is not None}
    return dataclasses.replace(opts, rate=opts.rate / k, **scaled)


# how each figure reads back: x k ** power (1: a rate, -1: a time); a figure not listed does not change with k
SUMMARY_POWERS = {"throughput_per_s": 1, "ideal_throughput_per_s": 1, "ideal_batched_throughput_per_s": 1, "rate": 1,
                  "duration_s": -1, "recovery_s": -1, "joules": -1, "joules_per_item": -1}
NODE_POWERS = {"backlog_s_mean": -1}
LINK_POWERS = {"estimated_mbps": 1, "latency_ms": -1}
TIMELINE_POWERS = {"t_s": -1, "max_backlog_s": -1, "target_backlog_s": -1, "own_backlog_s": -1, "rate": 1,
                   "throughput_per_s": 1}


def _read_back(d: dict, powers: dict[str, int], k: float) -> dict:
    return {c: v * k ** powers[c] if c in powers and isinstance(v, float | int) else v for c, v in d.items()}


def undilate_summary(s: dict, k: float) -> dict:
    """A run's summary read back in the emulated cluster's own time (throughputs and link rates x k, times / k);
    the rest (counts, accuracy, bytes per item, utilisations, efficiencies) does not change with k, and per-task
    times (per_node task_ms) stay as the dilated devices took them."""
    s = {**_read_back(s, SUMMARY_POWERS, k), "dilation": k}
    s["latency_ms"] = {q: v / k for q, v in s["latency_ms"].items()}
    s["energy_per_node_j"] = {name: j / k for name, j in s.get("energy_per_node_j", {}).items()}  # k times the time
    if s.get("joules_per_exit") is not None:
        s["joules_per_exit"] = [j / k for j in s["joules_per_exit"]]
    s["per_node"] = {name: _read_back(n, NODE_POWERS, k) for name, n in s.get("per_node", {}).items()}
    s["links"] = {a: {b: _read_back(f, LINK_POWERS, k) for b, f in peers.items()}
                  for a, peers in s.get("links", {}).items()}
    return s


def undilate_result(result: RunResult, k: float) -> RunResult:
    """The whole result in the cluster's own time: the summary, each item's times (so items.csv's latencies) and
    the timeline."""
    records = result.ledger.records.values()
    t0 = min((r.admitted_at for r in records), default=0.0)

    def back(t: float | None) -> float | None:
        return None if t is None else t0 + (t - t0) / k

    for r in records:
        r.admitted_at, r.dispatched_at, r.done_at, r.deadline = (back(r.admitted_at), back(r.dispatched_at),
                                                                 back(r.done_at), back(r.deadline))
    timeline = [_read_back(row, TIMELINE_POWERS, k) for row in result.timeline]
    return dataclasses.replace(result, summary=undilate_summary(result.summary, k), timeline=timeline)


def dilated_run(k: float, folder: Path) -> Callable[[Path, RunOptions], RunResult]:
    """A drop-in for run_cluster(path, opts) that runs the cluster dilated k times (its file written into
    ``folder``) and returns the result read back in the cluster's own time."""
    _check(k)

    def run(path: Path, opts: RunOptions) -> RunResult:
        if k == 1.0:
            return run_cluster(path, opts)
        folder.mkdir(parents=True, exist_ok=True)
        dilated = dilate_cluster(path, k, folder / f"{Path(path).stem}-dilated-{k:g}.yaml")
        return undilate_result(run_cluster(dilated, dilate_options(opts, k)), k)

    return run
