"""What a running site looks like, from its sources (runtime.source.SourceProcess): the live view's line a second on
stderr, and the status snapshot `mdiexit status` reads (ops/status.py). Each runs on a thread of its own and asks
each source's loop, which owns what it shows, for its part."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from functools import partial

import msgspec
import numpy as np

from mdiexit.ops.status import (
    EVENTS_SHOWN,
    EventStatus,
    LinkStatus,
    NodeStatus,
    SiteStatus,
    SourceStatus,
    write_status,
)
from mdiexit.runtime.loop import LoopTimeout
from mdiexit.runtime.nodestats import progress_report
from mdiexit.runtime.source import PROGRESS_SAMPLES, SourceProcess

log = logging.getLogger("mdiexit.source")


def live_view(sources: list[SourceProcess], stop: threading.Event, period_s: float = 1.0) -> None:
    """A status line a second on stderr, the first source's; with other sources, each one's throughput, rate and
    accuracy too."""
    first = sources[0]
    last_done, last_t = [s.ledger.completed for s in sources], first.clock.now()
    tty = sys.stderr.isatty()
    while not stop.wait(period_s):
        t = first.clock.now()
        done = [s.ledger.completed for s in sources]
        rates = [(d - d0) / (t - last_t) for d, d0 in zip(done, last_done, strict=True)]
        last_done, last_t = done, t
        try:
            line = first.loop.ask(partial(status_line, first, sum(rates)), timeout_s=period_s)
            if len(sources) > 1:
                line += "  sources " + " ".join(s.loop.ask(partial(source_line, s, r), timeout_s=period_s)
                                                for s, r in zip(sources, rates, strict=True))
        except LoopTimeout:
            continue
        sys.stderr.write("\r\x1b[2K" + line if tty else line + "\n")
        sys.stderr.flush()
    if tty:
        sys.stderr.write("\n")


def publish_status(sources: list[SourceProcess], stop: threading.Event, cluster_file: str,
                   period_s: float = 1.0) -> None:
    """Write the site's status snapshot (ops/status.py) every `period_s` until `stop`, and once more at the end:
    the first source's view of the site, and each source's own counts where there are several (each read on its
    loop)."""
    first = sources[0]
    last_done, last_t = first.ledger.completed, first.clock.now()
    while True:
        stopping = stop.wait(period_s)
        t = first.clock.now()
        done = first.ledger.completed
        rate = (done - last_done) / max(t - last_t, 1e-9)
        last_done, last_t = done, t
        try:
            snapshot = first.loop.ask(partial(site_status, first, cluster_file, rate, t), timeout_s=period_s)
            if len(sources) > 1:
                snapshot = msgspec.structs.replace(snapshot, sources=[
                    s.loop.ask(partial(source_status, s), timeout_s=period_s) for s in sources])
            first.status_path = write_status(snapshot, first.node.cfg.port)
        except (LoopTimeout, OSError, ValueError) as e:  # the next second's will do
            log.debug("status snapshot skipped: %s", e)
        if stopping:
            return


def site_status(src: SourceProcess, cluster_file: str, rate: float, t: float) -> SiteStatus:
    """The site as ``src`` sees it (on its loop)."""
    led = src.ledger
    failures = src.failure_summary()
    gone = {e["node"]: e["kind"] for e in failures}  # each node's last event: left, crashed, ...
    links = src.node.meter.figures(t)
    src.progress.setdefault(src.name, deque(maxlen=PROGRESS_SAMPLES)).append((t, progress_report(src.node, t)))
    nodes = []
    for node in list(src.node.cluster.nodes):
        name = node.name
        samples = list(src.progress.get(name, ()))
        util = tasks = watts = None
        if len(samples) >= 2:
            (t0, a), (t1, b) = samples[0], samples[-1]
            util = (b["busy_s"] - a["busy_s"]) / max(t1 - t0, 1e-9)
            tasks = (b["tasks"] - a["tasks"]) / max(t1 - t0, 1e-9)
            if "joules" in a and "joules" in b:
                watts = (b["joules"] - a["joules"]) / max(t1 - t0, 1e-9)
        report = src.reports.get(name)
        if name == src.name:
            state, backlog = "up", src.node.core.backlog_s(t)
        else:
            state = ("left" if gone.get(name) == "left" else "down") if name in src.down else (
                "waiting" if report is None else "leaving" if report.leaving else "up")
            backlog = src.node_backlog_s.get(name)
        fig = links.get(name)
        nodes.append(NodeStatus(
            name=name, role=node.role, state=state,
            package=src.node.package_version if name == src.name else src.package_of.get(name),
            backlog_ms=None if backlog is None else 1000 * backlog,
            utilization=util, tasks_per_s=tasks, watts=watts,
            link=None if fig is None else LinkStatus(fig[0] / 1e6 if fig[0] else None, 1000 * fig[1])))
    events = [EventStatus(node=e["node"], kind=e["kind"], at_s=e["at_s"], recovery_s=e.get("recovery_s"))
              for e in failures[-EVENTS_SHOWN:]]
    return SiteStatus(
        cluster=cluster_file, source=src.name, mode=src.node.mode, phase=src.phase, pid=os.getpid(),
        written_at=time.time(), run_s=src.run_elapsed_s(t), package=src.node.package_version, throughput_per_s=rate,
        admission_rate_per_s=src.admission.rate(), admitted=led.admitted, completed=led.completed,
        in_flight=len(led.in_flight),
        rejected=sum(src.gate.rejected.values()) + (sum(src.intake.refused.values()) if src.intake else 0),
        expired=led.expired + src.gate.expired, failed=led.failed, accuracy=src.accuracy(),
        joules_per_item=src.joules_per_item(), skipped=src.skipped(), nodes=nodes, events=events,
        rollout=None if src.sc.rollout is None else src.sc.rollout.line())


def source_status(src: SourceProcess) -> SourceStatus:
    """``src``'s own counts, for the site's status (on its loop)."""
    led = src.ledger
    return SourceStatus(name=src.name, weight=src.node.cfg.weight, admission_rate_per_s=src.admission.rate(),
                        admitted=led.admitted, completed=led.completed, accuracy=src.accuracy(), skipped=src.skipped())


def source_line(src: SourceProcess, rate: float) -> str:
    """``src``'s part of the live view: its throughput, admission rate and accuracy (on its loop)."""
    acc = f" acc {a:.3f}" if (a := src.accuracy()) is not None else ""
    skipped = f" skipped {n}" if (n := src.skipped()) else ""
    return f"{src.name}:{rate:.0f}/s(rate {src.admission.rate():.0f}{acc}{skipped})"


def status_line(src: SourceProcess, rate: float) -> str:
    """The live view's line: the run as ``src`` sees it (on its loop)."""
    led, gate, now = src.ledger, src.gate, src.clock.now()
    acc_text = f"{led.correct / max(1, led.completed):.3f}" if src.labelled() else "-"
    hist = np.array([led.exit_counts.get(k, 0) for k in range(1, src.node.pkg.num_tasks + 1)], float)
    hist = hist / max(1, hist.sum())
    backlogs = {n: src.node_backlog_s.get(n, r.backlog_s) for n, r in src.reports.items()}
    nodes = " ".join(f"{n}:DOWN" if n in src.down else f"{n}:{b * 1000:.0f}ms" for n, b in sorted(backlogs.items()))
    own = src.node.core.backlog_s(now) * 1000
    util = src.node.busy_s / max(1e-9, now - src.node.started_at)
    return (f"[{src.node.mode}] {rate:6.1f} items/s  admitted {led.admitted}  done {led.completed}"
            f"  acc {acc_text}  exits {' '.join(f'{h:.2f}' for h in hist)}  rate {src.admission.rate():.1f}/s"
            f"  backlog {src.name}:{own:.0f}ms({util:.0%}) {nodes}"
            + (f"  redispatched {led.redispatched}" if led.redispatched else "")
            + (f"  rejected {sum(gate.rejected.values())}" if gate.rejected else "")
            + (f"  expired {led.expired + gate.expired}" if led.expired + gate.expired else "")
            + (f"  {j:.4f} J/item" if (j := src.joules_per_item()) is not None else "")
            + (f"  skipped {n}" if (n := src.skipped()) else "")
            + f"  links {src.node.meter.status(now)}")
