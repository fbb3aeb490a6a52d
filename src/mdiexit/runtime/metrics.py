"""The run summary of DESIGN §8, computed from the source's ledger and the nodes' final counters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np


class ItemRecord(Protocol):
    """What the summary reads of one admitted item (the source's ledger record)."""

    admitted_at: float
    done_at: float | None
    label: int
    truth: int
    exit: int


class Ledger(Protocol):
    """What the summary reads of the source's ledger (`mdiexit.runtime.source.Ledger`): the records by item id,
    and the counts of duplicate and unknown results."""

    records: Mapping[int, ItemRecord]
    duplicates: int
    unknown: int


def summarize(ledger: Ledger, num_exits: int, window: tuple[float, float], final_stats: dict[str, dict[str, float]],
              backlog_samples: dict[str, list[float]], deadline_s: float | None = None,
              ) -> dict:
    """window: (start, end) of the measured part of the admission period (after warm-up)."""
    recs = list(ledger.records.values())
    done = [r for r in recs if r.done_at is not None]
    admitted = len(recs)
    correct = sum(r.label == r.truth for r in done)
    lat = np.array([r.done_at - r.admitted_at for r in done]) if done else np.zeros(1)
    w0, w1 = window
    in_window = sum(1 for r in done if w0 <= r.done_at <= w1)
    exits = np.bincount([r.exit for r in done], minlength=num_exits + 1)[1:] if done else np.zeros(num_exits)
    bytes_sent = sum(s.get("bytes_sent", 0.0) for s in final_stats.values())
    summary = {
        "admitted": admitted,
        "completed": len(done),
        "lost": admitted - len(done),
        "duplicates": ledger.duplicates,
        "accuracy": correct / admitted if admitted else 0.0,
        "throughput_per_s": in_window / max(w1 - w0, 1e-9),
        "latency_ms": {f"p{q}": float(np.percentile(lat, q) * 1000) for q in (50, 95, 99)},
        "exit_fraction": [float(x) for x in exits / max(1, len(done))],
        "bytes_per_item": bytes_sent / admitted if admitted else 0.0,
        "per_node": {name: {"utilization": s.get("busy_s", 0.0) / max(s.get("elapsed_s", 1.0), 1e-9),
                            "tasks_run": {k[len("tasks_run_"):]: int(v) for k, v in s.items()
                                          if k.startswith("tasks_run_")},
                            "backlog_s_mean": float(np.mean(backlog_samples.get(name) or [0.0])),
                            "bytes_sent": int(s.get("bytes_sent", 0.0))}
                     for name, s in sorted(final_stats.items())},
        "bad_messages": int(sum(s.get("bad_messages", 0.0) for s in final_stats.values())),
        "unknown_results": ledger.unknown,
    }
    if deadline_s is not None:
        on_time = sum(r.label == r.truth and r.done_at - r.admitted_at <= deadline_s for r in done)
        summary["deadline_ms"] = deadline_s * 1000
        summary["accuracy_within_deadline"] = on_time / admitted if admitted else 0.0
    return summary
