"""One source's feed in a run: what it admits (a dataset, an image folder or a video), its admission policy,
floor and deadline, where its outcomes also go (its sink), and its part of the summary. A site of several
cameras runs one feed per source, each with its own SourceProcess; the launcher (runtime.launch) starts them
and the first source also runs the cluster."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq

from mdiexit.clock import WallClock
from mdiexit.config import VIDEO_PREFIX, ClusterConfig, NodeConfig
from mdiexit.data import Dataset, load_items
from mdiexit.package import Package
from mdiexit.runtime.arrivals import Arrivals, StreamArrivals
from mdiexit.runtime.metrics import source_part
from mdiexit.runtime.options import ClusterError, RunOptions, source_options
from mdiexit.runtime.service import UNREAD_MIN_S, UNREAD_WAITS, ClientEndpoint
from mdiexit.runtime.sinks import Sink, SinkedArrivals, SinkSpec, check_sink, open_sink
from mdiexit.runtime.source import SourceProcess
from mdiexit.util import shown_path
from mdiexit.video import VideoArrivals, VideoFrames

log = logging.getLogger("mdiexit.feed")


@dataclass
class Feed:
    """A source's feed: prepared before any node starts (so that a bad stream or sink stops the run at once),
    opened when the run starts."""

    node: NodeConfig
    opts: RunOptions  # source_options: this source's stream, floor, deadline and sink
    stream: Dataset | None  # a dataset or folder (None: a video, or clients)
    video: str | None  # a video's path or URL
    sink_spec: SinkSpec | None
    proc: SourceProcess | None = None
    arrivals: Arrivals | None = None
    answering: Arrivals | None = None  # the arrivals, with every answer also sent to the sink
    frames: VideoFrames | None = None
    endpoint: ClientEndpoint | None = None  # where it serves clients
    sink: Sink | None = None
    start: float = 0.0
    end: float = 0.0

    @classmethod
    def prepare(cls, cluster: ClusterConfig, cluster_path: Path, node: NodeConfig, opts: RunOptions,
                pkg: Package) -> Feed:
        first = node.name == cluster.source.name
        opts = source_options(opts, node, first, sum(cluster.weights.values()))  # its stream was checked at load
        serving = _serves(opts, node)
        video = str(opts.items)[len(VIDEO_PREFIX):] if str(opts.items).startswith(VIDEO_PREFIX) and not serving \
            else None
        if video is not None:
            VideoFrames.check(video)  # before any node starts
        where = "--sink" if first and opts.sink and opts.sink != node.sink else \
            f"{shown_path(cluster_path)}: nodes.{node.name}.sink"
        sink_spec = check_sink(opts.sink, where) if opts.sink else None
        stream = load_items(pkg, opts.items, opts.data_dir) if not serving and video is None else None
        if stream is not None:
            if opts.items != "test" and len(stream) > opts.rate * opts.duration_s:
                log.warning("%s: only about %d of the %d items fit in --duration %g s at --rate %g; raise "
                            "--duration to stream them all", node.name, int(opts.rate * opts.duration_s),
                            len(stream), opts.duration_s, opts.rate)
            if not stream.labelled:
                log.warning("%s: the items have no labels: no accuracy is reported; items.csv has each item's "
                            "label", node.name)
            if opts.limit_items:
                stream = stream.subset(list(range(min(opts.limit_items, len(stream)))))
        return cls(node, opts, stream, video, sink_spec)

    @property
    def serving(self) -> bool:
        return _serves(self.opts, self.node)

    @property
    def name(self) -> str:
        return self.node.name

    def open_sink(self) -> None:
        """Reach the sink's broker now, before the run starts (a broker that is not there stops it)."""
        if self.sink_spec is not None:
            self.sink = open_sink(self.sink_spec, self.name)

    def open(self, clock: WallClock, pkg: Package) -> None:
        """What the source admits from, from now: its clients, its video or its dataset."""
        source = self.proc
        deadline_s = None if self.opts.deadline_ms is None else self.opts.deadline_ms / 1000
        if self.serving:
            arrivals = self.endpoint = client_endpoint(source, self.node, pkg)
        elif self.video is not None:  # the newest frame at the admission rate (mdiexit.video)
            self.frames = VideoFrames.open(self.video, pkg.input_shape, self.opts.fps, clock, source.loop.wake)
            arrivals = VideoArrivals(self.frames, source.admission.rate, clock.now(), deadline_s)
        else:  # items all | N: each item once, in order
            arrivals = StreamArrivals(self.stream, source.admission.rate, clock.now(),
                                      cycle=self.opts.items == "test", deadline_s=deadline_s)
        self.arrivals = source.stream = arrivals
        self.answering = arrivals if self.sink is None else \
            SinkedArrivals(arrivals, self.sink, self.name, pkg.classes, pkg.version)

    def run(self, duration_s: float | None) -> None:
        """Admit for ``duration_s`` (None: until the service stops), then drain: every offer gets its answer."""
        self.admit(duration_s)
        self.drain()

    def admit(self, duration_s: float | None) -> None:
        """Admit for ``duration_s``, or until the service stops (None)."""
        self.start, self.end = self.proc.admit(self.answering, duration_s, self.opts.serve)

    def drain(self) -> None:
        self.proc.phase = "draining"
        self.proc.drain(self.answering, self.opts.drain_timeout_s)
        self.close_sink()
        if self.endpoint is not None:
            self.endpoint.close()
            self.proc.intake = None
            for why, n in self.endpoint.refused.items():  # the endpoint's own refusals join the gate's counts
                self.proc.gate.count_rejected(why, n)
            self.endpoint = None

    def close_sink(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None

    def close(self) -> None:
        self.close_sink()
        if self.frames is not None:
            self.frames.close()
        if self.endpoint is not None:
            self.endpoint.close()

    def window(self) -> tuple[float, float]:
        """The part of the run its throughput is measured over: after the warm-up, to the end of admission; for a
        finite stream that ran out (a video file, --items all|N), to its last result, and from the start when it
        was shorter than the warm-up."""
        start, end, warmup_s = self.start, self.end, self.opts.warmup_s
        if not self.arrivals.done:
            return start + warmup_s, end
        last = max((r.done_at for r in self.proc.ledger.records.values() if r.done_at is not None), default=end)
        end = max(end, last)
        return (start + warmup_s if end - start > 2 * warmup_s else start), end

    @property
    def skipped(self) -> int:
        return self.proc.skipped()

    def part(self) -> dict:
        """This source's part of the summary (``sources`` in summary.json)."""
        src = self.proc
        stream = "clients" if self.serving else str(self.opts.items)
        return source_part(self.node.weight, stream, src.ledger, src.gate, self.window(),
                           src.node.pkg.num_tasks, src.labelled(), self.skipped, self.opts.target_accuracy,
                           adapted=self.opts.adapts_endless() and not self.serving, latencies=src.latencies)


def _serves(opts: RunOptions, node: NodeConfig) -> bool:
    """Whether a source serves clients (`mdiexit serve`, and it has a client_port) rather than stream."""
    return opts.serve is not None and node.client_port is not None


def client_endpoint(source: SourceProcess, node: NodeConfig, pkg: Package) -> ClientEndpoint:
    """``source``'s client endpoint, on ``node``'s client_port, behind its key (clients' keys: KEYS_DIR/clients/)."""
    identity = source.node.identity
    host = node.host if node.host in ("127.0.0.1", "localhost") else "*"
    endpoint = ClientEndpoint(source.node.ctx, f"tcp://{host}:{node.client_port}", pkg, identity, source.loop.wake,
                              source.node.versions.package, lambda: source.sc.package)
    endpoint.max_unread_s = max(UNREAD_MIN_S, UNREAD_WAITS * source.gate.max_wait_s)
    source.intake = endpoint
    try:
        endpoint.start()
    except zmq.ZMQError as e:
        endpoint.close()
        raise ClusterError(f"cannot serve clients on {host}:{node.client_port} ({e}); free the port or change "
                           f"{node.name}'s client_port") from None
    log.warning("%s serves clients on tcp://%s:%d (%s); Ctrl-C stops", node.name, node.host, node.client_port,
                "insecure" if identity is None else "CurveZMQ, client keys in KEYS_DIR/clients/")
    return endpoint

