"""The source node: admits items from a dataset stream, can run tasks itself, and keeps a ledger of every
admitted item until its one outcome (DESIGN §9). It watches every worker's heartbeats: a node silent for
`dead_after_ms` (or whose process died) is down, and the items in flight are dispatched again; so is any
item overdue. Admission decisions come from an `Admission` policy object."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mdiexit.data import Dataset
from mdiexit.protocol.messages import Control, Join, Result, State
from mdiexit.runtime.core import Finished, WorkItem
from mdiexit.runtime.join import member_message, package_archive, welcome_frames
from mdiexit.runtime.ledger import Ledger
from mdiexit.runtime.node import ClusterError, NodeProcess, encode, member_config, now

log = logging.getLogger("mdiexit.source")


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


class SourceProcess(NodeProcess):
    cycle_stream = True  # False: admit each stream item once, in order, then stop admitting

    def __init__(self, *args, stream: Dataset, admission: Admission, **kw):
        super().__init__(*args, **kw)
        self.stream = stream
        self.admission = admission
        self.ledger = Ledger()
        self.reports: dict[str, State] = {}
        self.final_stats: dict[str, dict[str, float]] = {}
        self.link_reports: dict[str, dict] = {}  # node -> peer -> its final link figures
        self.backlog_samples: dict[str, list[float]] = {}
        self.abort: str | None = None  # set (to a reason) when the run cannot go on
        self.timeline: list[dict] = []
        self.no_exits = tuple([1.0] * (self.pkg.num_tasks - 1) + [0.0])
        self.last_heard: dict[str, float] = {}
        self.down: dict[str, float] = {}  # node -> when it was declared down
        self.membership = threading.RLock()  # the launcher's watcher, the receive and admit threads all change it
        self.events: list[dict] = []  # node failures, leaves and returns, for the summary and the live view
        self.run_start = now()
        self.phase = "starting"  # admitting | draining | done
        self.dead_after_s = self.cluster.dead_after_ms / 1000
        self._archive: tuple[bytes, str] | None = None  # the package as sent to joiners

    @property
    def run_start(self) -> float:
        return self._run_start

    @run_start.setter
    def run_start(self, t: float) -> None:
        self._run_start = t
        self.start_run(t)

    def run_elapsed_s(self, t: float) -> float | None:
        return None if self.phase == "starting" else t - self.run_start

    # ---------------------------------------------------------------- results and state
    def handle(self, msg, arrays) -> None:
        if not isinstance(msg, Join):  # a joiner is alive once it reports as a worker
            self.last_heard[msg.sender] = now()
        super().handle(msg, arrays)

    def on_join(self, msg: Join) -> None:
        """Let a new device in: its key was allowed (ZAP checked it), its name is new. It gets the cluster view
        and the package; every node learns it as a neighbour."""
        if msg.sender != msg.name:
            self.reject("impersonation", f"JOIN for {msg.name!r} from {msg.sender!r}")
            return
        if msg.name in self.down and msg.name in self.links:  # a joiner that failed, back again
            self._welcome(msg.name)
            return
        if any(n.name == msg.name for n in self.cluster.nodes):
            log.warning("%s: %s asked to join, but a member has that name; a member restarts with the cluster "
                        "file (`mdiexit worker --cluster F --name N`)", self.name, msg.name)
            return
        key = self.auth.key_of(msg.name) if self.auth is not None else None
        member = member_message(self.name, msg, key.decode() if key else None)
        node = member_config(member)
        self.add_member(node)
        self._welcome(node.name)
        frames = encode(member)
        for peer, link in self.links.items():
            if peer != node.name:
                link.send(frames, now())
        self.events.append({"node": node.name, "kind": "joined", "at_s": now() - self.run_start})

    def on_result(self, msg: Result) -> None:
        """Accepted only for an admitted item, from a node holding the task it exited at (DESIGN §6)."""
        if not self.ledger.expects(msg.item_id):
            self.reject("unexpected_result", f"RESULT for item {msg.item_id}, which is not in flight")
            return
        if not self._could_compute(msg.sender, msg.exit):
            self.reject("unexpected_result", f"RESULT for item {msg.item_id} at exit {msg.exit} from "
                                             f"{msg.sender!r}, which does not hold task {msg.exit}")
            return
        self.ledger.complete(msg.item_id, msg.label, msg.exit, msg.confidence, msg.sender, now(), msg.attempt)

    def _could_compute(self, sender: str, task: int) -> bool:
        try:
            return self.cluster.node(sender).holds(task)  # per result: no set built
        except KeyError:
            return False

    def deliver(self, f: Finished) -> None:
        self.ledger.complete(f.item.item_id, f.label, f.exit, f.confidence, self.name, now(), f.item.attempt)

    def on_state(self, msg: State) -> None:
        self.reports[msg.sender] = msg
        self.backlog_samples.setdefault(msg.sender, []).append(msg.backlog_s)
        if msg.stats:
            self.final_stats[msg.sender] = dict(msg.stats)
        if msg.links:
            self.link_reports[msg.sender] = dict(msg.links)
        if msg.leaving:
            self.node_down(msg.sender, "left", now())

    def max_backlog_s(self) -> float:
        own = self.core.backlog_s(now())
        return max([own, *(s.backlog_s for n, s in self.reports.items() if n not in self.down)])

    def _welcome(self, name: str) -> None:
        if self._archive is None:
            self._archive = package_archive(self.cluster.package)
        keys = dict(self.identity.peers) if self.identity is not None else {}
        view = dataclasses.replace(self.cluster, mode=self.mode)  # the run's mode, which may override the file's
        self.links[name].send(welcome_frames(self.name, view, keys, self._archive), now())

    # ---------------------------------------------------------------- failures and recovery (DESIGN §9)
    def node_down(self, name: str, kind: str, t: float) -> None:
        """`name` crashed, hung or left: nobody routes to it, and every item in flight is dispatched again
        (an item may be on it or on its way there; other attempts' late results are dropped)."""
        with self.membership:
            if name in self.down or name == self.name:
                return
            self.down[name] = t
        self.core.on_leave(name)
        pending = self.ledger.in_flight_ids()
        self.events.append({"node": name, "kind": kind, "at_s": t - self.run_start, "in_flight": len(pending),
                            "pending": set(pending), "recovery_s": None})
        log.warning("%s: node %s is down (%s); re-dispatching %d items in flight", self.name, name, kind,
                    len(pending))
        for item_id in pending:
            self.redispatch(item_id, t, f"node {name} {kind}")

    def redispatch(self, item_id: int, t: float, why: str) -> None:
        r = self.ledger.retry(item_id, t, why)
        if r is None:
            return
        thresholds, version = r.thresholds, r.thresholds_version
        self.route(WorkItem(item_id, 1, r.x, r.admitted_at, thresholds, version, attempt=r.attempt), t)

    def supervise(self, t: float) -> None:
        """Declare silent nodes down, notice returning ones, re-dispatch overdue items, close recoveries."""
        with self.membership:
            self._supervise(t)

    def _supervise(self, t: float) -> None:
        for name, heard in list(self.last_heard.items()):
            if name in self.down:
                if heard > self.down[name] and self.reports.get(name) is not None \
                        and not self.reports[name].leaving:
                    del self.down[name]
                    self.events.append({"node": name, "kind": "back", "at_s": t - self.run_start})
                    log.warning("%s: node %s is back", self.name, name)
            elif t - heard > self.dead_after_s:
                self.node_down(name, "silent", t)
        overdue_s = max(3 * self.dead_after_s, 4 * (self.max_backlog_s() + self.ledger.recent_latency_s()))
        for item_id in self.ledger.overdue(t, overdue_s):
            self.redispatch(item_id, t, f"no result after {overdue_s:.1f} s")
        for e in self.events:
            if e.get("pending"):
                e["pending"] = {i for i in e["pending"] if i in self.ledger.in_flight}
                if not e["pending"]:
                    e["recovery_s"] = t - self.run_start - e["at_s"]

    def failure_summary(self) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "pending"} for e in self.events]

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
            if i >= len(labels) and not self.cycle_stream:
                break  # every item admitted once
            thresholds, version = self.admission.thresholds() if self.rules.exits else (self.no_exits, 0)
            k = i % len(labels)
            x = images[k:k + 1]
            self.ledger.admit(i, t, int(labels[k]), x, thresholds, version)
            self.route(WorkItem(i, 1, x, t, thresholds, version), t)
            i += 1
            next_t += 1.0 / max(self.admission.rate(), 1e-3)
            if next_t < t - 1.0:
                next_t = t  # do not burst to catch up after a stall
        return start, now()

    def control_step(self, t: float, start: float) -> None:
        """One admission-control step (every ~100 ms): feed the largest backlog, log a timeline row, and tell
        the workers when the thresholds change."""
        self.supervise(t)
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

    def drain(self, timeout_s: float) -> None:
        """Wait for every admitted item's outcome, still recovering from failures meanwhile."""
        deadline = now() + timeout_s
        last = now()
        while now() < deadline and not self.abort and self.ledger.settled < self.ledger.admitted:
            time.sleep(0.02)
            if now() - last >= 0.1:
                last = now()
                self.supervise(last)
                self.ledger.window(last, 2.0)

    def shutdown_workers(self, timeout_s: float = 3.0) -> None:
        """Shut down every worker (not only the source's neighbours, joiners too); collect the live ones' counters."""
        workers = [w.name for w in self.cluster.workers]
        frames = encode(Control(sender=self.name, action="shutdown"))
        for w in workers:
            if w in self.links:
                self.links[w].send(frames, now())
        deadline = now() + timeout_s
        while now() < deadline and any(w not in self.final_stats for w in workers if w not in self.down):
            time.sleep(0.02)
        self.final_stats[self.name] = self.stats()
        self.link_reports[self.name] = self.meter.figures(now())

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
        nodes = " ".join(f"{n}:DOWN" if n in self.down else f"{n}:{s.backlog_s * 1000:.0f}ms"
                         for n, s in sorted(self.reports.items()))
        own = self.core.backlog_s(now()) * 1000
        util = self.busy_s / max(1e-9, now() - self.started_at)
        return (f"[{self.mode}] {rate:6.1f} items/s  admitted {self.ledger.admitted}  done {self.ledger.completed}"
                f"  acc {acc:.3f}  exits {' '.join(f'{h:.2f}' for h in hist)}  rate {self.admission.rate():.1f}/s"
                f"  backlog {self.name}:{own:.0f}ms({util:.0%}) {nodes}"
                + (f"  redispatched {self.ledger.redispatched}" if self.ledger.redispatched else "")
                + f"  links {self.meter.status(now())}")
