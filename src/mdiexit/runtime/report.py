"""A run's results: RunResult, and writing them (summary.json, items.csv, timeline.csv) and printing them."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mdiexit.runtime.ledger import Ledger

# items.csv: one row per admitted item.
ITEM_COLUMNS: dict[str, str] = {
    "source": "the source that admitted it (a site may have several)",
    "item_id": "the item's id at that source",
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
    "version": "the package version it ran on, every task of it (NAME@HASH; a roll-out runs two)",
}


@dataclass
class RunResult:
    summary: dict
    ledger: Ledger  # per-item records, keyed by item id; a record's key is its stream index
    timeline: list[dict]  # one row per admission-control step
    paths: list[str] | None = None  # the file behind each stream item (image folders)
    ledgers: dict[str, Ledger] | None = None  # every source's ledger, by source (None: only ``ledger``'s)
    source_paths: dict[str, list[str] | None] | None = None  # every source's ``paths``



def write_results(result: RunResult, out: Path) -> Path:
    """DIR/summary.json and DIR/items.csv (one row per admitted item)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(result.summary, indent=1, default=str))
    with (out / "items.csv").open("w") as f:
        f.write(",".join(ITEM_COLUMNS) + "\n")
        ledgers = result.ledgers or {_first_source(result.summary): result.ledger}
        for source, ledger in ledgers.items():
            paths = (result.source_paths or {}).get(source, result.paths) or []
            for i, r in sorted(ledger.records.items()):
                lat = "" if r.done_at is None else f"{(r.done_at - r.admitted_at) * 1000:.2f}"
                k = r.key  # the stream item (a cycled stream repeats; rejected offers leave gaps in the item ids)
                file = paths[k].replace('"', '""') if paths else ""
                f.write(f"{source},{i},{r.truth},{r.label},{r.exit},{r.confidence:.5f},{lat},{r.node},"
                        f"{r.attempt + 1},\"{r.failed}\",{k},\"{file}\",{r.outcome},{r.package}\n")
    if result.timeline:
        cols = list(result.timeline[0])
        with (out / "timeline.csv").open("w") as f:
            f.write(",".join(cols) + "\n")
            for row in result.timeline:
                f.write(",".join(_cell(row[c]) for c in cols) + "\n")
    return path


def _first_source(summary: dict) -> str:
    return next((n["name"] for n in summary.get("config", {}).get("nodes", []) if n.get("role") == "source"), "")


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
    if (s.get("config") or {}).get("emulation") == "zero-cost":
        accuracy += " (a zero-cost model: its labels mean nothing)"
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
