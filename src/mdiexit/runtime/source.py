"""The source node: admits items from a dataset stream, can run tasks itself, and keeps a ledger of every
admitted item until its one result arrives. Admission decisions come from an `Admission` policy object."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mdiexit.data import Dataset
from mdiexit.protocol.messages import Control, Result, State
from mdiexit.runtime.core import Finished, WorkItem
from mdiexit.runtime.node import ClusterError, NodeProcess, encode, now


class Admission(Protocol):
    """What the source asks its admission policy (DESIGN §3.3). `fixed` below; controllers plug in here."""

    def rate(self) -> float: ...
    def thresholds(self) -> tuple[tuple[float, ...], int]: ...  # (thresholds, version)
    def step(self, max_backlog_s: float, t: float) -> None: ...


@dataclass
class FixedAdmission:
    rate_per_s: float
    fixed_thresholds: tuple[float, ...]

    def rate(self) -> float:
        return self.rate_per_s

    def thresholds(self) -> tuple[tuple[float, ...], int]:
        return self.fixed_thresholds, 0

    def step(self, max_backlog_s: float, t: float) -> None:
        pass


@dataclass
class Record:
    admitted_at: float
    truth: int
    done_at: float | None = None
    label: int = -1
    exit: int = 0
    confidence: float = 0.0
    node: str = ""


@dataclass
class Ledger:
    """Every admitted item, until its one result arrives. Counts duplicates and unknown results."""

    records: dict[int, Record] = field(default_factory=dict)
    completed: int = 0
    duplicates: int = 0
    unknown: int = 0
    recent: deque = field(default_factory=deque)  # (done_at, correct) of the last completions
    lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, item_id: int, t: float, truth: int) -> None:
        with self.lock:
            self.records[item_id] = Record(t, truth)

    def complete(self, item_id: int, label: int, exit_: int, conf: float, node: str, t: float) -> None:
        with self.lock:
            r = self.records.get(item_id)
            if r is None:
                self.unknown += 1
            elif r.done_at is not None:
                self.duplicates += 1
            else:
                r.done_at, r.label, r.exit, r.confidence, r.node = t, label, exit_, conf, node
                self.completed += 1
                self.recent.append((t, label == r.truth))

    def window(self, t: float, span_s: float) -> tuple[float, float]:
        """(throughput per s, accuracy) of the results completed in the last `span_s` seconds."""
        with self.lock:
            while self.recent and self.recent[0][0] < t - span_s:
                self.recent.popleft()
            n = len(self.recent)
            correct = sum(c for _, c in self.recent)
        return n / span_s, (correct / n if n else float("nan"))

    @property
    def admitted(self) -> int:
        return len(self.records)


class SourceProcess(NodeProcess):
    def __init__(self, *args, stream: Dataset, admission: Admission, **kw):
        super().__init__(*args, **kw)
        self.stream = stream
        self.admission = admission
        self.ledger = Ledger()
        self.reports: dict[str, State] = {}
        self.final_stats: dict[str, dict[str, float]] = {}
        self.backlog_samples: dict[str, list[float]] = {}
        self.abort: str | None = None  # set (to a reason) by the launcher when a node crashes
        self.timeline: list[dict] = []
        self.no_exits = tuple([1.0] * (self.pkg.num_tasks - 1) + [0.0])
        self.sent_version = -1

    # ---------------------------------------------------------------- results and state
    def on_result(self, msg: Result) -> None:
        self.ledger.complete(msg.item_id, msg.label, msg.exit, msg.confidence, msg.sender, now())

    def deliver(self, f: Finished) -> None:
        self.ledger.complete(f.item.item_id, f.label, f.exit, f.confidence, self.name, now())

    def on_state(self, msg: State) -> None:
        self.reports[msg.sender] = msg
        self.backlog_samples.setdefault(msg.sender, []).append(msg.backlog_s)
        if msg.stats:
            self.final_stats[msg.sender] = dict(msg.stats)

    def max_backlog_s(self) -> float:
        own = self.core.backlog_s(now())
        return max([own, *(s.backlog_s for s in self.reports.values())])

    # ---------------------------------------------------------------- the run
    def wait_ready(self, workers: list[str], timeout: float) -> None:
        deadline = now() + timeout
        while now() < deadline and not self.abort:
            missing = [w for w in workers if w not in self.reports]
            if not missing:
                return
            time.sleep(0.05)
        if self.abort:
            raise ClusterError(self.abort)
        missing = [w for w in workers if w not in self.reports]
        raise ClusterError(f"node(s) {', '.join(missing)} sent no heartbeat within {timeout:.0f} s")

    def admit_for(self, duration_s: float) -> tuple[float, float]:
        """Admit items at the admission policy's rate for `duration_s`. Returns (start, end) times."""
        images, labels = self.stream.images, self.stream.labels
        start = now()
        next_t, i, last_step = start, 0, start
        while not self.abort:
            t = now()
            if t >= start + duration_s:
                break
            if t - last_step >= 0.1:
                self.control_step(t, start)
                last_step = t
            if t < next_t:
                time.sleep(min(next_t - t, 0.01))
                continue
            thresholds, version = self.admission.thresholds() if self.rules.exits else (self.no_exits, 0)
            k = i % len(labels)
            self.ledger.admit(i, t, int(labels[k]))
            self.route(WorkItem(i, 1, images[k:k + 1], t, thresholds, version), t)
            i += 1
            next_t += 1.0 / max(self.admission.rate(), 1e-3)
            if next_t < t - 1.0:
                next_t = t  # do not burst to catch up after a stall
        return start, now()

    def control_step(self, t: float, start: float) -> None:
        """One admission-control step (every ~100 ms): feed the largest backlog, log a timeline row, and tell
        the workers when the thresholds change."""
        max_backlog = self.max_backlog_s()
        self.admission.step(max_backlog, t)
        self.backlog_samples.setdefault(self.name, []).append(self.core.backlog_s(t))
        throughput, accuracy = self.ledger.window(t, 2.0)
        thresholds, version = self.admission.thresholds()
        state = getattr(self.admission, "state", dict)()
        self.timeline.append({"t_s": t - start, "rate": self.admission.rate(),
                              "operating_point": state.get("operating_point", ""),
                              "thresholds": " ".join(f"{x:g}" for x in thresholds), "max_backlog_s": max_backlog,
                              "throughput_per_s": throughput, "accuracy": accuracy,
                              "target_backlog_s": state.get("target_backlog_s", "")})
        if version != self.sent_version and self.rules.exits:
            self.sent_version = version
            frames = encode(Control(sender=self.name, action="thresholds", thresholds=list(thresholds),
                                    thresholds_version=version))
            for link in self.links.values():
                link.send(frames, t)

    def drain(self, timeout_s: float) -> None:
        deadline = now() + timeout_s
        while now() < deadline and not self.abort and self.ledger.completed < self.ledger.admitted:
            time.sleep(0.02)

    def shutdown_workers(self, workers: list[str], timeout_s: float = 3.0) -> None:
        frames = encode(Control(sender=self.name, action="shutdown"))
        for w in workers:
            if w in self.links:
                self.links[w].send(frames, now())
        deadline = now() + timeout_s
        while now() < deadline and any(w not in self.final_stats for w in workers):
            time.sleep(0.02)
        self.final_stats[self.name] = self.stats()

    # ---------------------------------------------------------------- live view
    def live_view(self, stop: threading.Event, period_s: float = 1.0) -> None:
        last_done, last_t = 0, now()
        tty = sys.stderr.isatty()
        while not stop.wait(period_s):
            t = now()
            done = self.ledger.completed
            rate = (done - last_done) / (t - last_t)
            last_done, last_t = done, t
            line = self.status_line(rate)
            if tty:
                sys.stderr.write("\r\x1b[2K" + line)
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        if tty:
            sys.stderr.write("\n")

    def status_line(self, rate: float) -> str:
        with self.ledger.lock:
            recs = [r for r in self.ledger.records.values() if r.done_at is not None]
        acc = np.mean([r.label == r.truth for r in recs]) if recs else 0.0
        hist = np.bincount([r.exit for r in recs], minlength=self.pkg.num_tasks + 1)[1:]
        hist = hist / max(1, hist.sum())
        nodes = " ".join(f"{n}:{s.backlog_s * 1000:.0f}ms" for n, s in sorted(self.reports.items()))
        own = self.core.backlog_s(now()) * 1000
        util = self.busy_s / max(1e-9, now() - self.started_at)
        return (f"[{self.mode}] {rate:6.1f} items/s  admitted {self.ledger.admitted}  done {self.ledger.completed}"
                f"  acc {acc:.3f}  exits {' '.join(f'{h:.2f}' for h in hist)}  rate {self.admission.rate():.1f}/s"
                f"  backlog {self.name}:{own:.0f}ms({util:.0%}) {nodes}")
