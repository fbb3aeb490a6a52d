"""The site at a glance: the snapshot a running source writes once a second, and how `mdiexit status` shows it.

The source (of `mdiexit run`, `source` or `serve`) writes `SiteStatus` as JSON to a file on its own machine, named
after the source and its port, and replaces it atomically each second; `mdiexit status --cluster F` reads that
file. It is a file, not a network endpoint, on purpose: it opens no port, needs no key, and whoever may read the
source machine's runtime folder may read the site's state (the snapshot holds no secret). The folder is
MDIEXIT_RUNTIME_DIR when set (the systemd units set /run/mdiexit), else $XDG_RUNTIME_DIR/mdiexit, else
/tmp/mdiexit-UID. Imports no runtime: the command that reads it loads neither ZeroMQ nor ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import msgspec

STALE_AFTER_S = 5.0  # a snapshot this old: its source has stopped (or hangs)
EVENTS_SHOWN = 10


class LinkStatus(msgspec.Struct, frozen=True):
    bandwidth_mbps: float | None  # the source's estimate of its link to the node (None: not measured yet)
    latency_ms: float | None


class NodeStatus(msgspec.Struct, frozen=True):
    name: str
    role: str  # source | worker
    state: str  # up | waiting (not heard yet) | leaving | down | left
    package: str | None  # the package version the node runs (None: not reported yet)
    backlog_ms: float | None
    utilization: float | None  # busy time over the last few seconds
    tasks_per_s: float | None
    link: LinkStatus | None  # from the source (None for the source itself)
    watts: float | None = None  # its draw over the last few seconds: metered or by its power model (None: neither)


class EventStatus(msgspec.Struct, frozen=True):
    node: str
    kind: str  # crashed | silent | left | joined | back (as the run summary's node_failures)
    at_s: float  # seconds after the run started
    recovery_s: float | None = None


class SourceStatus(msgspec.Struct, frozen=True):
    """One source of a site of several (its own counts; the site's line sums them)."""

    name: str
    weight: float
    admission_rate_per_s: float
    admitted: int
    completed: int
    accuracy: float | None
    skipped: int = 0


class SiteStatus(msgspec.Struct, frozen=True):
    cluster: str
    source: str
    mode: str
    phase: str  # starting | admitting | draining | done
    pid: int
    written_at: float  # Unix time
    run_s: float | None  # seconds since admission started
    package: str
    throughput_per_s: float  # results in the last second
    admission_rate_per_s: float
    admitted: int
    completed: int
    in_flight: int
    rejected: int  # by the gate and, for a service, at the door
    expired: int
    failed: int
    accuracy: float | None  # of the results so far, against their labels (None: no labelled result yet)
    nodes: list[NodeStatus]
    events: list[EventStatus]
    joules_per_item: float | None = None  # the counted nodes' joules so far per completed item (None: none counted)
    skipped: int = 0  # a video stream's frames never offered: a newer one came first (freshness, not loss)
    sources: list[SourceStatus] = []  # a site of several sources run by this process: each one's own counts
    rollout: str | None = None  # the last roll-out of a new package version, in a line (`mdiexit rollout`)


def runtime_dirs() -> list[Path]:
    """Where snapshots are written (the first that can be made) and looked for (all, freshest wins). A folder named
    by MDIEXIT_RUNTIME_DIR is the only one: a stale snapshot elsewhere, of a source that once had this name and
    port, is not taken for a running one."""
    if os.environ.get("MDIEXIT_RUNTIME_DIR"):
        return [Path(os.environ["MDIEXIT_RUNTIME_DIR"])]
    dirs = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "mdiexit")
    dirs += [Path("/run/mdiexit"), Path(tempfile.gettempdir()) / f"mdiexit-{os.getuid()}"]
    return dirs


def file_name(source: str, port: int) -> str:
    return f"status-{source}-{port}.json"


def write_status(status: SiteStatus, port: int) -> Path | None:
    """Replace the snapshot atomically in the first usable runtime folder; None when none is writable."""
    for folder in runtime_dirs():
        try:
            folder.mkdir(mode=0o755 if folder == Path("/run/mdiexit") else 0o700, parents=True, exist_ok=True)
            path = folder / file_name(status.source, port)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(msgspec.json.encode(status))
            os.replace(tmp, path)
            return path
        except OSError:
            continue
    return None


class StatusError(Exception):
    """No snapshot to show. The message says where it was looked for and what to check."""


def read_status(source: str, port: int, path: Path | None = None) -> tuple[SiteStatus, Path]:
    """The freshest snapshot of this source, or StatusError."""
    candidates = [path] if path is not None else [d / file_name(source, port) for d in runtime_dirs()]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise StatusError(f"no status from source {source!r} (port {port}) on this machine: looked for "
                          f"{', '.join(str(p) for p in candidates)}; is `mdiexit run`, `source` or `serve` running "
                          "here with this cluster file? (a service's runtime folder: MDIEXIT_RUNTIME_DIR)")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    try:
        return msgspec.json.decode(newest.read_bytes(), type=SiteStatus), newest
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise StatusError(f"{newest}: not a status snapshot ({e}); delete it, the source writes a new one each "
                          "second") from None


def age_s(status: SiteStatus, now: float | None = None) -> float:
    return (time.time() if now is None else now) - status.written_at


def render(status: SiteStatus, now: float | None = None) -> str:
    """The terminal view: the run's line, a table of nodes, the last failures and joins."""
    age = age_s(status, now)
    if status.phase == "done":
        phase = f"done (ended {age:.0f} s ago)"
    else:
        phase = status.phase if age < STALE_AFTER_S else f"STALE: last written {age:.0f} s ago, while {status.phase}"
    run = f" for {status.run_s:.0f} s" if status.run_s is not None else ""
    acc = f"{status.accuracy:.3f}" if status.accuracy is not None else "-"
    energy = f" · {status.joules_per_item:.4f} J/item" if status.joules_per_item is not None else ""
    energy += f" · {status.skipped} frames skipped" if status.skipped else ""
    lines = [f"site {status.cluster} · source {status.source} (pid {status.pid}) · {status.mode} · {phase}{run}",
             f"package {status.package}",
             f"throughput {status.throughput_per_s:.1f} items/s · admission {status.admission_rate_per_s:.1f}/s · "
             f"admitted {status.admitted} · completed {status.completed} · in flight {status.in_flight} · "
             f"rejected {status.rejected} · expired {status.expired} · failed {status.failed} · accuracy {acc}"
             + energy]
    lines += [f"roll-out: {status.rollout}"] if status.rollout else []
    lines.append("")
    rows = [("node", "role", "state", "backlog", "util", "tasks/s", "watts", "link from source", "package")]
    for n in status.nodes:
        link = "-" if n.link is None else (
            f"{n.link.bandwidth_mbps:.1f} Mb/s" if n.link.bandwidth_mbps else "? Mb/s") + (
            f" {n.link.latency_ms:.0f} ms" if n.link and n.link.latency_ms is not None else "")
        rows.append((n.name, n.role, n.state.upper() if n.state in ("down", "left") else n.state,
                     _num(n.backlog_ms, "{:.0f} ms"), _num(n.utilization, "{:.0%}"), _num(n.tasks_per_s, "{:.0f}"),
                     _num(n.watts, "{:.1f} W"), link, "same" if n.package == status.package else (n.package or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if len(status.sources) > 1:
        lines += ["", "sources:"]
        table = [("source", "weight", "admission", "admitted", "completed", "accuracy", "skipped")]
        table += [(s.name, f"{s.weight:g}", f"{s.admission_rate_per_s:.1f}/s", str(s.admitted), str(s.completed),
                   _num(s.accuracy, "{:.3f}"), str(s.skipped)) for s in status.sources]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if status.events:
        lines += ["", "last failures and joins:"]
        for e in status.events[-EVENTS_SHOWN:]:
            rec = f", recovered in {e.recovery_s:.2f} s" if e.recovery_s is not None else ""
            lines.append(f"  {e.at_s:8.1f} s  {e.node} {e.kind}{rec}")
    return "\n".join(lines)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
