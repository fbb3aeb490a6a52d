"""A run's results: RunResult, and writing them (summary.json, items.csv, timeline.csv) and printing them."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mdiexit.runtime.ledger import Ledger

# What summary.json holds: every key a run or a simulation may write, documented here once (docs/reference/outputs.md
# is generated from it; a test checks that real summaries write nothing else).
SUMMARY_FIELDS: dict[str, str] = {
    "mode": "the mode the cluster ran in (local, ddi, ddi-exit, mdi, mdi-static, mdi-exit)",
    "offered": "items offered to the source (the stream's, or the clients' requests)",
    "rejected": "offered items refused at admission, with a reason",
    "rejected_reasons": "rejections by reason (for example overloaded)",
    "admitted": "items admitted into the cluster",
    "completed": "admitted items that ended in a result",
    "expired": "items dropped unrun past their deadline (at the gate or in the cluster)",
    "failed": "admitted items that ended in an explicit failure (no node could run them)",
    "lost": "offered items that reached no outcome: always 0, else the run exits 1",
    "duplicates": "items delivered twice: always 0, else the run exits 1",
    "skipped": "with --items video: frames never offered, because a newer one came first (freshness, not loss)",
    "video_error": "with --items video: why the video stopped decoding before the run ended, if it did",
    "redispatched": "items sent again after a node was declared down",
    "redundant_results": "late results of re-dispatched items, dropped",
    "accuracy": "correct results over admitted items (null for a service's unlabelled requests)",
    "throughput_per_s": "results per second over the measured window (after warm-up)",
    "latency_ms": "admission-to-result latency percentiles: p50, p95, p99",
    "exit_fraction": "the share of results that left at each exit",
    "bytes_per_item": "bytes sent on every link, over admitted items",
    "joules": "energy of the nodes that have a power model (idle, busy and network), in joules; null when none has",
    "joules_per_item": "joules over completed items",
    "energy_per_node_j": "each counted node's joules",
    "energy_uncounted_nodes": "nodes without a power model (`power` in the cluster file), left out of the joules",
    "energy_measured_nodes": "nodes whose joules their own power meter measured (a Jetson's INA3221 rails)",
    "joules_per_exit": "what an item leaving at each exit costs: the shared idle and network joules per item plus "
                       "the busy joules of the tasks up to that exit",
    "per_node": "per node: utilization, tasks_run by task, backlog_s_mean, bytes_sent, task_ms, overrun_fraction, "
                "runtime_cpu_s (host CPU of everything but the model), runtime_share (of the device's time, charged "
                "under cpu_slowdown; null: not charged), messages_received by kind",
    "node_visits": "items at nodes: each admission at the source, and each item's DATA arriving at a node",
    "runtime_cpu_us_per_item_hop": "host CPU of the runtime (every process, less the model's calls), in µs per "
                                   "node visit",
    "bad_messages": "malformed messages the nodes dropped",
    "unknown_results": "results for items the source did not know (dropped)",
    "rejected_messages": "well-formed messages the nodes refused, by reason",
    "ideal_throughput_per_s": "the physical limit at this exit mix, one item at a time (the planner's, where it has "
                              "one)",
    "ideal_batched_throughput_per_s": "the same limit with each task at its best batch size",
    "efficiency": "throughput over ideal_throughput_per_s",
    "efficiency_batched": "throughput over ideal_batched_throughput_per_s",
    "failure_reasons": "why failed items failed",
    "deadline_ms": "the items' deadline, where one was set",
    "accuracy_within_deadline": "correct results within the deadline, over offered items",
    "node_failures": "each node declared down: node, kind, at_s, in_flight, recovery_s",
    "recovery_s": "the longest time until a failure's items in flight had all settled",
    "secure": "whether every link was authenticated and encrypted (CurveZMQ)",
    "links": "per node and peer: estimated_mbps, latency_ms, bytes_sent at the end of the run",
    "estimation_overhead": "bytes that measuring the links added, and their fraction of all bytes sent",
    "host_cpu_utilization": "the host's CPU use over the run (emulation only)",
    "emulation_warnings": "where the emulation could not stay faithful (a busy host, devices overrunning)",
    "crashed": "nodes whose process exited during the run",
    "duration_s": "seconds of admission",
    "rate": "the admitted rate asked for (items/s)",
    "dilation": "the time dilation the run was emulated at (every node's clock K times slower); every figure "
                "is in the cluster's own time",
    "simulated": "simulator runs only: wall_s, setup_s, events, virtual_s",
    "config": "the run's settings: cluster, package, mode, rate, nodes, admission, thresholds, ...",
    "error": "why the run stopped early, where it did",
}

# items.csv: one row per admitted item.
ITEM_COLUMNS: dict[str, str] = {
    "item_id": "the item's id in this run",
    "truth": "its true label (-1 where the item carries none, as a service's requests)",
    "label": "the label the cluster gave it",
    "exit": "the exit it left the model at",
    "confidence": "its calibrated confidence at that exit",
    "latency_ms": "admission to result (empty when there was no result)",
    "node": "the node that ran its last task",
    "attempts": "how many times it was dispatched (more than 1 after a node failed)",
    "failed": "why it failed, where it did",
    "stream_index": "its position in the stream (a cycled stream repeats)",
    "path": "the file it came from (image folders)",
    "outcome": "its one outcome: result, expired or failed",
}


@dataclass
class RunResult:
    summary: dict
    ledger: Ledger  # per-item records, keyed by item id; a record's key is its stream index
    timeline: list[dict]  # one row per admission-control step
    paths: list[str] | None = None  # the file behind each stream item (image folders)



def write_results(result: RunResult, out: Path) -> Path:
    """DIR/summary.json and DIR/items.csv (one row per admitted item)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(result.summary, indent=1, default=str))
    with (out / "items.csv").open("w") as f:
        f.write(",".join(ITEM_COLUMNS) + "\n")
        paths = result.paths or []
        for i, r in sorted(result.ledger.records.items()):
            lat = "" if r.done_at is None else f"{(r.done_at - r.admitted_at) * 1000:.2f}"
            k = r.key  # the stream item (a cycled stream repeats; rejected offers leave gaps in the item ids)
            file = paths[k].replace('"', '""') if paths else ""
            f.write(f"{i},{r.truth},{r.label},{r.exit},{r.confidence:.5f},{lat},{r.node},{r.attempt + 1},"
                    f"\"{r.failed}\",{k},\"{file}\",{r.outcome}\n")
    if result.timeline:
        cols = list(result.timeline[0])
        with (out / "timeline.csv").open("w") as f:
            f.write(",".join(cols) + "\n")
            for row in result.timeline:
                f.write(",".join(_cell(row[c]) for c in cols) + "\n")
    return path


def _cell(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def print_summary(s: dict, file=sys.stdout) -> None:
    lat = s["latency_ms"]
    print(f"mode {s['mode']}: offered {s['offered']}, rejected {s['rejected']}, admitted {s['admitted']}, completed "
          f"{s['completed']}, expired {s['expired']}, failed {s['failed']}, lost {s['lost']}, duplicates "
          f"{s['duplicates']}, bad messages {s['bad_messages']}", file=file)
    if s["rejected"]:
        print(f"  rejected by reason {s['rejected_reasons']}", file=file)
    accuracy = "n/a (unlabelled requests)" if s["accuracy"] is None else f"{s['accuracy']:.4f}"
    print(f"  throughput {s['throughput_per_s']:.1f} items/s, accuracy {accuracy}, latency p50/p95/p99 "
          f"{lat['p50']:.0f}/{lat['p95']:.0f}/{lat['p99']:.0f} ms, {s['bytes_per_item']:.0f} bytes/item", file=file)
    print(f"  exit fractions {' '.join(f'{x:.3f}' for x in s['exit_fraction'])}", file=file)
    if s.get("joules_per_item") is not None:
        left_out = s.get("energy_uncounted_nodes") or []
        print(f"  energy {s['joules_per_item']:.3f} J/item ({s['joules']:.1f} J"
              + (f"; no power model for {', '.join(left_out)}" if left_out else "") + ")", file=file)
    elif s.get("energy_uncounted_nodes"):
        print("  energy: no node has a power model (`power:` in the cluster file)", file=file)
    if s.get("ideal_throughput_per_s"):
        print(f"  ideal (physical limit at this exit mix) {s['ideal_throughput_per_s']:.1f} items/s one at a time, "
              f"{s['ideal_batched_throughput_per_s']:.1f} batched: efficiency {s['efficiency']:.0%} "
              f"({s['efficiency_batched']:.0%} of the batched limit)", file=file)
    if "host_cpu_utilization" in s:
        print(f"  host CPU {s['host_cpu_utilization']:.0%}", file=file)
    for name, n in s["per_node"].items():
        print(f"  {name:>10}: utilization {n['utilization']:.0%}, tasks {n['tasks_run']}, "
              f"mean backlog {n['backlog_s_mean'] * 1000:.0f} ms", file=file)
    for e in s.get("node_failures", []):
        rec = "" if e.get("recovery_s") is None else f", its {e['in_flight']} items in flight settled " \
                                                      f"{e['recovery_s']:.1f} s later"
        print(f"  node {e['node']} {e['kind']} at {e['at_s']:.1f} s{rec}", file=file)
    if s.get("redispatched") or s.get("failed"):
        print(f"  re-dispatched {s['redispatched']}, failed {s['failed']}, redundant results dropped "
              f"{s['redundant_results']}", file=file)
    if any(s.get("rejected_messages", {}).values()):
        print(f"  rejected messages {s['rejected_messages']}", file=file)
