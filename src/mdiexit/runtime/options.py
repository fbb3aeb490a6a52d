"""A run's options (what `run`, `serve`, `source` and `simulate` take), and the error of a run that cannot go on.
No sockets, no processes: the simulator reads these without loading the runtime's shells."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

from mdiexit.config import VIDEO_PREFIX, ConfigError, NodeConfig, stream_items
from mdiexit.util import SignalFlag


class ClusterError(RuntimeError):
    """A node cannot take part in the run (port taken, a peer never answered). The message names the node."""


@dataclass
class RunOptions:
    mode: str | None = None  # None: the cluster file's
    rate: float = 50.0
    duration_s: float = 20.0
    warmup_s: float = 2.0
    drain_timeout_s: float = 60.0  # after admission stops, wait this long for the last results
    ready_timeout_s: float = 60.0
    deadline_ms: float | None = None  # each item's deadline: expired (dropped unrun) once past it
    max_backlog_ms: float = 600.0  # the gate admits nothing while the largest backlog is above this
    max_wait_ms: float = 250.0  # the gate rejects (overloaded) what would wait longer than this to be admitted
    live: bool = True
    data_dir: Path | None = None
    limit_items: int | None = None  # cycle over the first N test items only
    # test: the test split, cycled | all: every item of data_dir in order, once | N: the first N | video:PATH_OR_URL
    items: str | int = "test"
    fps: float | None = None  # a video file's frame rate, instead of its own
    sink: str | None = None  # jsonl:PATH or mqtt://HOST:PORT/TOPIC: every outcome also goes there (runtime/sinks.py)
    admission: str = "fixed"  # fixed | rate | thresholds
    target_accuracy: float | None = None  # rate adaptation; default: final-exit validation accuracy - 1 point
    target_backlog_ms: float = 300.0
    thresholds: tuple[float, ...] | None = None  # fixed admission: these instead of the package's defaults
    net: str = "app"  # app: links paced in the application | namespaces: kernel-shaped (root, Linux; DESIGN §7)
    insecure: bool = False  # no CurveZMQ: anyone who reaches a port can talk to the cluster (debugging only)
    keys_dir: Path | None = None  # overrides the cluster file's keys_dir
    serve: threading.Event | SignalFlag | None = None  # serve clients (`mdiexit serve`) until it is set, not a stream
    metrics_port: int | None = None  # the source's Prometheus endpoint (default: its metrics_port in the file)
    metrics_addr: str | None = None  # default loopback
    self_profile: bool = False  # each node profiles itself at start-up instead of taking the host profile
    # time dilation: every node's clock runs this many times slower (mdiexit.clock); every figure, option and
    # output stays in the cluster's own time
    dilation: float = 1.0
    sources: tuple[str, ...] | None = None  # the sources this process runs (`mdiexit source --name`); None: all

    def adapts_endless(self) -> bool:
        """Whether admission sets the rate of an endless stream (the test split, cycled): such a source always has
        more to send than it is given."""
        return self.items == "test" and self.admission != "fixed"

    def __post_init__(self) -> None:
        """Refuse what no run can mean, naming the flag: a rate, a duration or an item count of zero or less."""
        checks = [("--rate", self.rate, self.rate > 0, "a number > 0 (items per second)"),
                  ("--duration", self.duration_s, self.duration_s > 0, "a number of seconds > 0"),
                  ("--warmup", self.warmup_s, self.warmup_s >= 0, "a number of seconds >= 0"),
                  ("--deadline-ms", self.deadline_ms, self.deadline_ms is None or self.deadline_ms > 0,
                   "a number of milliseconds > 0"),
                  ("--max-backlog-ms", self.max_backlog_ms, self.max_backlog_ms > 0, "a number of milliseconds > 0"),
                  ("--max-wait-ms", self.max_wait_ms, self.max_wait_ms >= 0, "a number of milliseconds >= 0"),
                  ("--target-backlog-ms", self.target_backlog_ms, self.target_backlog_ms > 0,
                   "a number of milliseconds > 0"),
                  ("--target-accuracy", self.target_accuracy,
                   self.target_accuracy is None or 0 < self.target_accuracy <= 1, "a fraction in (0, 1]"),
                  ("--items", self.items, not isinstance(self.items, int) or self.items > 0,
                   "test, all, a count > 0 or video:PATH"),
                  ("--dilation", self.dilation, self.dilation >= 1, "a factor >= 1 (1 = none)"),
                  ("--fps", self.fps, self.fps is None or self.fps > 0, "frames per second > 0"),
                  ("limit_items", self.limit_items, self.limit_items is None or self.limit_items > 0, "a count > 0")]
        for flag, value, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{flag}: expected {expected}, got {value!r}")


def source_options(opts: RunOptions, node: NodeConfig, first: bool, total_weight: float) -> RunOptions:
    """The run's options as ``node`` (a source) runs them: its own stream, frame rate, floor and deadline where its
    entry in the cluster file has them, and its rate: a dataset's `fps` (the items a second it offers, as a camera
    would), else its weight's share of ``--rate`` (the site's rate, or where rate adaptation starts: sources that
    start in proportion to their weights settle there sooner). ``--sink`` overrides the first source's sink only."""
    items: str | int = opts.items
    data_dir = opts.data_dir
    if node.stream is not None:
        items, data_dir = stream_items(node.stream, opts.data_dir)
    video = str(items).startswith(VIDEO_PREFIX)
    rate = node.fps if node.fps is not None and not video else opts.rate * node.weight / total_weight
    return dataclasses.replace(
        opts, items=items, data_dir=data_dir, fps=node.fps or opts.fps, rate=rate,
        target_accuracy=node.target_accuracy if node.target_accuracy is not None else opts.target_accuracy,
        deadline_ms=node.deadline_ms if node.deadline_ms is not None else opts.deadline_ms,
        sink=(opts.sink if first and opts.sink else node.sink))
