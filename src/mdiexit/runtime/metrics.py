"""The run summary of DESIGN §8, computed from the source's ledger and the nodes' final counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from mdiexit.policies.gate import AdmissionGate
from mdiexit.protocol.messages import REJECT_REASONS
from mdiexit.protocol.stats import LIMIT, SINGLE, calibration_ms, per_task_s, tasks_run
from mdiexit.runtime.ledger import Ledger


def summarize(ledger: Ledger, num_exits: int, window: tuple[float, float], final_stats: dict[str, dict[str, float]],
              backlog_samples: dict[str, list[float]], deadline_s: float | None = None,
              gate: AdmissionGate | None = None, latencies: Iterable[float] = (),
              physical_limit: Callable[[dict, list[float], str], float | None] | None = None) -> dict:
    """window: (start, end) of the measured part of the admission period (after warm-up). Every offered item
    is one of: rejected or expired at the ``gate``, or admitted and then completed, expired or failed.
    ``physical_limit`` (final stats, exit mix, time prefix) -> items/s: the planner's limit, which also counts
    links and task holdings; where it gives one, it is the ideal."""
    recs = list(ledger.records.values())
    done = [r for r in recs if r.done_at is not None and not r.expired]
    admitted = ledger.admitted
    gate = gate or AdmissionGate()
    rejected = dict(gate.rejected)
    w0, w1 = window
    if ledger.keep_records:
        # latency, like throughput, over the measured window: the start-up's first calls are not the steady state
        measured = [r for r in done if r.admitted_at >= w0] or done
        lat = np.array([r.done_at - r.admitted_at for r in measured]) if measured else np.zeros(1)
        in_window = sum(1 for r in done if w0 <= r.done_at <= w1)
    else:  # a service: its last results' latencies, and every result over the window
        lat = np.array(list(latencies) or [0.0])
        in_window = ledger.completed
    exits = np.array([ledger.exit_counts.get(k, 0) for k in range(1, num_exits + 1)], float)
    bytes_sent = sum(s.get("bytes_sent", 0.0) for s in final_stats.values())
    summary = {
        "offered": max(gate.offered, admitted),
        "rejected": sum(rejected.values()),
        "rejected_reasons": rejected,
        "admitted": admitted,
        "completed": ledger.completed,
        "expired": ledger.expired + gate.expired,
        "failed": ledger.failed,
        "lost": max(gate.offered, admitted) - ledger.settled - gate.expired - sum(rejected.values()),
        "duplicates": ledger.duplicates,
        "redispatched": ledger.redispatched,
        "redundant_results": ledger.redundant,
        # a service's requests carry no true label: no accuracy to report
        "accuracy": (ledger.correct / admitted if admitted else 0.0) if ledger.keep_records else None,
        "throughput_per_s": in_window / max(w1 - w0, 1e-9),
        "latency_ms": {f"p{q}": float(np.percentile(lat, q) * 1000) for q in (50, 95, 99)},
        "exit_fraction": [float(x) for x in exits / max(1, ledger.completed)],
        "bytes_per_item": bytes_sent / admitted if admitted else 0.0,
        "per_node": {name: {"utilization": s.get("busy_s", 0.0) / max(s.get("elapsed_s", 1.0), 1e-9),
                            "tasks_run": {str(k): v for k, v in tasks_run(s).items()},
                            "backlog_s_mean": float(np.mean(backlog_samples.get(name) or [0.0])),
                            "bytes_sent": int(s.get("bytes_sent", 0.0)),
                            "task_ms": calibration_ms(s)}
                     for name, s in sorted(final_stats.items())},
        "bad_messages": int(sum(s.get("bad_messages", 0.0) for s in final_stats.values())),
        "unknown_results": ledger.unknown,
        "rejected_messages": {r: int(sum(s.get(f"rejected_{r}", 0.0) for s in final_stats.values()))
                              for r in REJECT_REASONS},
    }
    for name, st in final_stats.items():
        calls = st.get("emulated_calls", 0.0)
        summary["per_node"][name]["overrun_fraction"] = st.get("overruns", 0.0) / calls if calls else 0.0
        summary["per_node"][name].update(runtime_figures(st))
    summary["node_visits"] = node_visits(final_stats, admitted)
    summary["runtime_cpu_us_per_item_hop"] = runtime_cpu_per_visit(final_stats, summary["node_visits"])
    for key, prefix in (("ideal_throughput_per_s", SINGLE), ("ideal_batched_throughput_per_s", LIMIT)):
        planned = physical_limit(final_stats, summary["exit_fraction"], prefix) if physical_limit else None
        summary[key] = planned if planned is not None else ideal_throughput(final_stats, summary["exit_fraction"],
                                                                            prefix)
    if summary["ideal_throughput_per_s"]:
        summary["efficiency"] = summary["throughput_per_s"] / summary["ideal_throughput_per_s"]
        summary["efficiency_batched"] = summary["throughput_per_s"] / summary["ideal_batched_throughput_per_s"]
    failures = {r.failed for r in recs if r.failed}
    if failures:
        summary["failure_reasons"] = sorted(failures)
    if deadline_s is not None:
        on_time = sum(r.label == r.truth and r.done_at - r.admitted_at <= deadline_s for r in done)
        summary["deadline_ms"] = deadline_s * 1000
        # over every offered item: a rejected or expired one is no answer in time
        summary["accuracy_within_deadline"] = on_time / summary["offered"] if summary["offered"] else 0.0
    return summary


def source_part(weight: float, stream: str, ledger: Ledger, gate: AdmissionGate, window: tuple[float, float],
                num_exits: int, labelled: bool, skipped: int, target_accuracy: float | None, adapted: bool,
                latencies: Iterable[float] = ()) -> dict:
    """One source's part of a run (summary.json's ``sources``, runtime.summary.SourcePart). ``adapted``: its
    admission set the rate of an endless stream, so it always had more to send than it was given."""
    s = summarize(ledger, num_exits, window, {}, {}, None, gate, latencies)
    held_back = s["offered"] - s["admitted"] + skipped
    return {"weight": weight, "stream": stream, "offered": s["offered"], "admitted": s["admitted"],
            "skipped": skipped, "rejected": s["rejected"], "completed": s["completed"], "expired": s["expired"],
            "failed": s["failed"], "lost": s["lost"], "throughput_per_s": s["throughput_per_s"],
            "accuracy": s["accuracy"] if labelled else None, "target_accuracy": target_accuracy,
            "latency_ms": {q: s["latency_ms"][q] for q in ("p50", "p95")}, "exit_fraction": s["exit_fraction"],
            "backlogged": adapted or held_back > 0.01 * max(1, s["offered"] + skipped)}


def jain_index(values: Iterable[float]) -> float | None:
    """Jain's fairness index: 1 when all values are equal, 1/n when one has everything (None: none, or all 0)."""
    x = np.asarray(list(values), float)
    if not len(x) or not np.any(x):
        return None
    return float(x.sum() ** 2 / (len(x) * (x ** 2).sum()))


def fairness(parts: Mapping[str, Mapping]) -> float | None:
    """Jain's index of throughput / weight over the sources that were backlogged (None: fewer than two were)."""
    shares = [p["throughput_per_s"] / p["weight"] for p in parts.values() if p["backlogged"]]
    return jain_index(shares) if len(shares) >= 2 else None


def link_summary(link_reports: dict[str, dict], final_stats: dict[str, dict[str, float]]) -> dict:
    """Per node and peer, the link estimates at the end of the run, and the bytes that measuring them added."""
    links = {node: {peer: {"estimated_mbps": bps / 1e6 if bps else None, "latency_ms": lat * 1000,
                           "bytes_sent": int(sent)}
                    for peer, (bps, lat, sent) in sorted(peers.items())}
             for node, peers in sorted(link_reports.items())}
    overhead = sum(s.get("estimation_bytes", 0.0) for s in final_stats.values())
    total = sum(s.get("bytes_sent", 0.0) for s in final_stats.values())
    return {"links": links, "estimation_overhead": {"bytes": int(overhead),
                                                    "fraction_of_bytes_sent": overhead / total if total else 0.0}}


def ideal_throughput(final_stats: dict[str, dict[str, float]], exit_fraction: list[float],
                     prefix: str = SINGLE) -> float | None:
    """The cluster's compute limit at this exit mix: the sum over nodes of 1 / (expected emulated seconds per
    item), each task at its calibrated time one item at a time (``SINGLE``) or at its best batch size (``LIMIT``).
    None when it needs the planner (a node holds only some tasks) or a node is not calibrated (a real device)."""
    if not any(exit_fraction):
        return None  # nothing completed: no exit mix
    reach = np.cumsum(np.asarray(exit_fraction, float)[::-1])[::-1]  # P(item runs task k)
    total = 0.0
    for st in final_stats.values():
        limits = per_task_s(st, prefix)
        held = tasks_run(st)
        if not limits:
            if held:
                return None  # computes, but uncalibrated
            continue
        if len(limits) != len(reach):
            return None
        total += 1.0 / sum(reach[k - 1] * limits[k] for k in limits)
    return total or None


HOST_CPU_LIMIT = 0.7  # above this share of the host's cores, emulated devices may run slow
OVERRUN_LIMIT = 0.05  # more tasks than this over their emulated budget: the emulation is not faithful


def host_cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole host so far, from /proc/stat (None where there is none)."""
    try:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def emulation_check(summary: dict, before: tuple[int, int] | None, after: tuple[int, int] | None,
                    emulation: str = "calibrated") -> None:
    """Record the host's CPU use over the run, and warn where the emulation could not stay faithful (under
    `emulation: zero-cost` no device time is emulated: a busy host is what the run measures)."""
    warnings = []
    if before and after and after[1] > before[1]:
        use = (after[0] - before[0]) / (after[1] - before[1])
        summary["host_cpu_utilization"] = use
        if use > HOST_CPU_LIMIT and emulation != "zero-cost":
            warnings.append(f"the host's CPUs were {use:.0%} busy (> {HOST_CPU_LIMIT:.0%}): emulated devices may "
                            "have run slower than their slowdown says; use fewer nodes or `run --dilation 2`")
    for name, n in summary["per_node"].items():
        if n.get("overrun_fraction", 0.0) > OVERRUN_LIMIT:
            warnings.append(f"{name}: {n['overrun_fraction']:.0%} of its tasks took longer than their emulated "
                            "time: that device ran slower than emulated")
    summary["emulation_warnings"] = warnings


RECEIVED = "received_"  # a node's stats: messages received, by kind (received_data, received_state, ...)


def runtime_figures(stats: Mapping[str, float]) -> dict[str, float | None]:
    """A node's runtime cost: the host CPU its runtime used (everything but the model's calls), and the share of
    its device's time charged for it under `cpu_slowdown` (None: not charged)."""
    charged = stats.get("runtime_charged_s", 0.0)
    return {"runtime_cpu_s": stats.get("runtime_cpu_s"),
            "runtime_share": charged / max(stats.get("elapsed_s", 0.0), 1e-9) if charged else None,
            "messages_received": {k[len(RECEIVED):]: int(v) for k, v in stats.items() if k.startswith(RECEIVED)}}


def node_visits(final_stats: Mapping[str, Mapping[str, float]], admitted: int) -> int:
    """Items at nodes: each admission at the source, and each item's DATA arriving at a node."""
    return admitted + int(sum(s.get(RECEIVED + "data", 0.0) for s in final_stats.values()))


def runtime_cpu_per_visit(final_stats: Mapping[str, Mapping[str, float]], visits: int) -> float | None:
    """Microseconds of runtime CPU, over every process, per node visit."""
    cpu = [s["runtime_cpu_s"] for s in final_stats.values() if "runtime_cpu_s" in s]
    return 1e6 * sum(cpu) / visits if cpu and visits else None
