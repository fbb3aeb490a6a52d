"""Start a cluster on this machine (`mdiexit run`), or one node of a multi-device deployment
(`mdiexit worker`, `mdiexit source`). Workers are separate OS processes; the source runs in the launcher.

Shutdown: the end of the run or Ctrl-C stops everything. A worker that crashes is reported by name and the
run goes on without it (the source re-dispatches its items, DESIGN §9). Children die with their parent
(PR_SET_PDEATHSIG), so no orphan process keeps a port bound.

Security: every node uses CurveZMQ with the cluster's keys (`keys_dir`, `--keys-dir`). A one-machine run on a
cluster file without keys makes ephemeral keys for the run. `insecure=True` turns CurveZMQ off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import zmq

from mdiexit.clock import WallClock
from mdiexit.config import ClusterConfig, load_cluster
from mdiexit.data import load_items
from mdiexit.energy import cluster_models, run_energy
from mdiexit.package import Package, load_package
from mdiexit.planner import limit_from_stats
from mdiexit.runtime.arrivals import StreamArrivals
from mdiexit.runtime.device import HostProfiles, planner_costs, profile_nodes, read_profile
from mdiexit.runtime.metrics import emulation_check, host_cpu_ticks, link_summary, summarize
from mdiexit.runtime.node import NodeProcess
from mdiexit.runtime.options import ClusterError, RunOptions
from mdiexit.runtime.report import RunResult
from mdiexit.runtime.runpolicy import capacity_hint, make_admission, make_gate, planned_limits, preflight
from mdiexit.runtime.service import UNREAD_MIN_S, UNREAD_WAITS, ClientEndpoint
from mdiexit.runtime.sinks import SinkedArrivals, check_sink, open_sink
from mdiexit.runtime.source import Admission, SourceProcess
from mdiexit.runtime.summary import run_config, run_summary
from mdiexit.security import Identity, allow_key, create_keys, load_identity
from mdiexit.util import shown_path
from mdiexit.video import VIDEO_PREFIX, VideoArrivals, VideoFrames

log = logging.getLogger("mdiexit.launch")
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="spawner")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn_worker(cluster_path: Path, name: str, mode: str, netns: str | None = None,
                 pace: bool = True, keys_dir: Path | None = None, host_profile: Path | None = None,
                 dilation: float = 1.0) -> subprocess.Popen:
    """A worker process; with ``netns``, inside that network namespace (`ip netns exec`). ``keys_dir`` None:
    insecure. ``host_profile``: this host's task times (profile_host), instead of profiling at start-up.
    ``dilation``: its clock's factor (the run's)."""
    cmd = [sys.executable, "-m", "mdiexit.cli", "worker", "--cluster", str(cluster_path), "--name", name,
           "--mode", mode]
    cmd += ["--keys-dir", str(keys_dir)] if keys_dir is not None else ["--insecure"]
    cmd += ["--host-profile", str(host_profile)] if host_profile is not None else []
    if not pace:
        cmd.append("--no-pace")
    if dilation != 1.0:
        cmd += ["--dilation", repr(dilation)]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]  # ip execs the command: the child is python itself
    return _child(cmd)


def _child(cmd: list[str]) -> subprocess.Popen:
    """A node process that dies with this one, and does not repeat the launcher's insecure warning."""
    env = {**os.environ, "MDIEXIT_INSECURE_WARNED": "1"}
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL, env=env)


@dataclass
class LiveRun:
    """A running cluster, for whoever drives faults into it (the chaos bench, the recovery tests)."""

    source: SourceProcess
    procs: dict[str, subprocess.Popen]
    spawn_args: dict  # what spawn_worker needs besides the name, namespace and host profile
    netns: dict[str, str | None]
    profiles: HostProfiles = field(default_factory=HostProfiles)

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def restart(self, name: str) -> None:
        """Start worker `name` again (after it died): it rejoins with the cluster file alone."""
        old = self.procs[name]
        if old.poll() is None:
            raise RuntimeError(f"worker {name} is still running")
        # from a thread that lives as long as this process: PR_SET_PDEATHSIG fires when the spawning thread ends
        self.procs[name] = _SPAWNER.submit(spawn_worker, name=name, netns=self.netns.get(name),
                                           host_profile=self.profiles.file(name), **self.spawn_args).result()


    def join(self, name: str, port: int, **device) -> None:
        """A new device joins with the source's address alone: a fresh key, allowed by the operator (here),
        then `mdiexit worker --join`. ``device``: slowdown, tasks, bandwidth_mbps, latency_ms, threads."""
        keys_dir = self.spawn_args["keys_dir"]
        src = self.source.node.cfg
        cmd = [sys.executable, "-m", "mdiexit.cli", "worker", "--join", src.address, "--name", name,
               "--port", str(port), "--workdir", tempfile.mkdtemp(prefix=f"mdiexit-join-{name}-")]
        if keys_dir is None:
            cmd.append("--insecure")
        else:
            public = create_keys([name], keys_dir, overwrite=True)[name]
            allow_key(keys_dir, name, public)
            cmd += ["--key", str(keys_dir / f"{name}.key_secret"), "--source-key", str(keys_dir / f"{src.name}.key")]
        for k, v in device.items():
            cmd += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)]
        if (dilation := self.spawn_args.get("dilation", 1.0)) != 1.0:
            cmd += ["--dilation", repr(dilation)]  # on the run's clock, as every other node
        self.procs[name] = _SPAWNER.submit(_child, cmd).result()


def measured_window(ledger, arrivals, start: float, end: float, warmup_s: float) -> tuple[float, float]:
    """The part of the run its throughput is measured over: after the warm-up, to the end of admission; for a
    finite stream that ran out (a video file, --items all|N), to its last result, and from the start when it was
    shorter than the warm-up."""
    if not arrivals.done:
        return start + warmup_s, end
    last = max((r.done_at for r in ledger.records.values() if r.done_at is not None), default=end)
    end = max(end, last)
    return (start + warmup_s if end - start > 2 * warmup_s else start), end


def run_cluster(cluster_path: Path, opts: RunOptions, admission: Admission | None = None,
                spawn: bool = True, on_ready: Callable[[LiveRun], None] | None = None) -> RunResult:
    """Run the source here and, with `spawn`, every worker of the cluster file as a child process (without
    it, the workers are started elsewhere with `mdiexit worker`). Returns the run summary.

    ``opts.net == "namespaces"``: each worker runs in its own network namespace, the kernel shapes the
    bandwidths (tbf) and the application only adds the latencies (mdiexit.emulation.netns)."""
    if opts.net == "namespaces":
        return _run_in_namespaces(cluster_path, opts, admission, spawn, on_ready)
    if opts.net != "app":
        raise ValueError(f"unknown net {opts.net!r}; choose app or namespaces")
    return _run_cluster(cluster_path, opts, admission, spawn, on_ready=on_ready)


def _run_in_namespaces(cluster_path: Path, opts: RunOptions, admission: Admission | None,
                       spawn: bool, on_ready: Callable[[LiveRun], None] | None) -> RunResult:
    from mdiexit.emulation.netns import NamespaceError, NamespaceNetwork, cleanup_stale, namespaces_supported

    if not spawn:
        raise NamespaceError("--net namespaces starts every worker here; it cannot be used with `mdiexit source`")
    ok, why = namespaces_supported()
    if not ok:
        raise NamespaceError(why)
    cleanup_stale()  # leftovers of crashed earlier runs (owner process gone)
    network = NamespaceNetwork(load_cluster(cluster_path), clock=WallClock(opts.dilation))

    def ready(live: LiveRun) -> None:  # the run starts: tc follows the bandwidth schedules from now on
        network.start_schedules(live.source.run_start)
        if on_ready is not None:
            on_ready(live)

    with network as net:
        result = _run_cluster(net.cluster_path, opts, admission, spawn,
                              netns={name: ns for name, (ns, _) in net.nodes.items()}, on_ready=ready)
    result.summary["config"]["cluster"] = str(cluster_path)  # not the rewritten copy
    return result


def cluster_keys(cluster: ClusterConfig, opts: RunOptions, ephemeral_ok: bool) -> Path | None:
    """The keys folder of this run: --keys-dir, the cluster file's, or (one machine, no keys configured) a
    temporary folder of ephemeral keys. None when insecure."""
    if opts.insecure:
        log.warning("running INSECURE (--insecure): links are neither authenticated nor encrypted")
        return None
    keys_dir = opts.keys_dir or cluster.keys_dir
    if keys_dir is None and not any(n.public_key for n in cluster.nodes):
        if not ephemeral_ok:
            raise ClusterError("no keys for this cluster: create them with `mdiexit keys --cluster F --out DIR` "
                               "and set keys_dir (or pass --keys-dir), or pass --insecure")
        keys_dir = Path(tempfile.mkdtemp(prefix="mdiexit-keys-"))
        create_keys([n.name for n in cluster.nodes], keys_dir)
    return keys_dir


def node_identity(cluster: ClusterConfig, name: str, keys_dir: Path | None,
                  secret_file: Path | None = None) -> Identity | None:
    if keys_dir is None and secret_file is None:
        return None
    return load_identity(name, cluster.public_keys(), keys_dir, secret_file)


def _run_cluster(cluster_path: Path, opts: RunOptions, admission: Admission | None, spawn: bool,
                 netns: dict[str, str | None] | None = None,
                 on_ready: Callable[[LiveRun], None] | None = None) -> RunResult:
    run = preflight(cluster_path, opts, check_onnx=True)
    cluster, mode, rules, pkg = run.cluster, run.mode, run.rules, run.pkg
    if opts.serve is not None and cluster.source.client_port is None:
        raise ClusterError(f"{cluster_path}: the source has no client_port; add `client_port: PORT` to its entry")
    keys_dir = cluster_keys(cluster, opts, ephemeral_ok=spawn and opts.serve is None)
    ephemeral = keys_dir is not None and keys_dir != (opts.keys_dir or cluster.keys_dir)
    identity = node_identity(cluster, cluster.source.name, keys_dir)
    video = str(opts.items).startswith(VIDEO_PREFIX) and opts.serve is None
    if video:
        VideoFrames.check(str(opts.items)[len(VIDEO_PREFIX):])  # before any node starts
    sink_spec = check_sink(opts.sink) if opts.sink else \
        check_sink(cluster.source.sink, f"{shown_path(cluster_path)}: sink") if cluster.source.sink else None
    stream = load_items(pkg, opts.items, opts.data_dir) if opts.serve is None and not video else None
    if stream is not None and opts.items != "test" and len(stream) > opts.rate * opts.duration_s:
        log.warning("only about %d of the %d items fit in --duration %g s at --rate %g; raise --duration to stream "
                    "them all", int(opts.rate * opts.duration_s), len(stream), opts.duration_s, opts.rate)
    if stream is not None and not stream.labelled:
        log.warning("the items have no labels: no accuracy is reported; items.csv has each item's label")
    if stream is not None and opts.limit_items:
        stream = stream.subset(list(range(min(opts.limit_items, len(stream)))))
    # the devices' costs for the planner: the host profile every emulated node takes
    limit_at = planned_limits(cluster, pkg, mode, partial(planner_costs, pkg, cluster))
    if admission is None:
        admission = make_admission(pkg, mode, opts, limit_at)
    workers = [] if rules.single_node else [w.name for w in cluster.workers]
    pace = netns is None  # in namespaces the kernel shapes the bandwidths
    profiles = HostProfiles() if opts.self_profile else \
        profile_nodes(cluster, pkg, [cluster.source.name, *(workers if spawn else [])])
    sink = open_sink(sink_spec, cluster.source.name) if sink_spec is not None else None  # a broker: reached now
    clock = WallClock(opts.dilation)  # every node's: the cluster's own time (mdiexit.clock)
    procs = {w: spawn_worker(cluster_path, w, mode, (netns or {}).get(w), pace, keys_dir, profiles.file(w),
                             opts.dilation) for w in workers} if spawn else {}
    source = SourceProcess(cluster, cluster.source.name, pkg, mode=mode, admission=admission, gate=make_gate(opts),
                           pace_bandwidth=pace, identity=identity,
                           allowed_dir=keys_dir / "allowed" if keys_dir is not None else None,
                           metrics_port=opts.metrics_port, metrics_addr=opts.metrics_addr,
                           host_profile=profiles.of(cluster.source.name), clock=clock)
    source.ledger.keep_records = opts.serve is None  # a service keeps counters, not a record of every item
    source.sc.capacity_hint = capacity_hint(opts, admission, limit_at)
    crashed: list[str] = []
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        seen: dict[str, subprocess.Popen] = {}
        while watching.is_set():
            for name, p in list(procs.items()):
                if p.poll() is not None and seen.get(name) is not p:
                    seen[name] = p
                    if p.returncode == 0:
                        continue  # a graceful leave: the source already knows
                    crashed.append(name)
                    log.warning("node %s exited unexpectedly with status %s; the run goes on", name, p.returncode)
                    source.loop.post(partial(source.node_down, name, "crashed", clock.now()))
            clock.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    view_stop = threading.Event()
    status = threading.Thread(target=source.publish_status, args=(view_stop, shown_path(cluster_path)), name="status",
                              daemon=True)  # for `mdiexit status`
    endpoint: ClientEndpoint | None = None
    try:
        source.start()
        status.start()
        watcher.start()
        if crash_during_start := [w for w in workers if procs.get(w) and procs[w].poll() is not None]:
            raise ClusterError(f"node(s) {', '.join(crash_during_start)} exited during start-up")
        source.wait_ready(workers, opts.ready_timeout_s)
        source.run_start = clock.now()
        if on_ready is not None:
            spawn_args = {"cluster_path": cluster_path, "mode": mode, "pace": pace, "keys_dir": keys_dir,
                          "dilation": opts.dilation}
            live = LiveRun(source, procs, spawn_args, dict(netns or {}), profiles)
            threading.Thread(target=on_ready, args=(live,), name="on-ready", daemon=True).start()
        viewer = threading.Thread(target=source.live_view, args=(view_stop,), daemon=True)
        if opts.live:
            viewer.start()
        source.phase = "admitting"
        ticks_before = host_cpu_ticks()
        deadline_s = None if opts.deadline_ms is None else opts.deadline_ms / 1000
        if opts.serve is not None:
            arrivals = endpoint = client_endpoint(source, cluster, pkg, identity)
        elif video:  # the newest frame at the admission rate; older ones skipped (mdiexit.video)
            frames = VideoFrames.open(str(opts.items)[len(VIDEO_PREFIX):], pkg.input_shape, opts.fps, clock)
            arrivals = VideoArrivals(frames, source.admission.rate, clock.now(), deadline_s)
        else:
            arrivals = StreamArrivals(stream, source.admission.rate, clock.now(), cycle=opts.items == "test",
                                      deadline_s=deadline_s)  # items all | N: each item once, in order
        source.stream = arrivals
        answering = arrivals if sink is None else \
            SinkedArrivals(arrivals, sink, source.name, pkg.classes, pkg.version)  # every outcome also to the sink
        if opts.serve is not None:
            start, end = source.admit(answering, None, opts.serve)
        else:
            start, end = source.admit(answering, opts.duration_s)
        ticks_after = host_cpu_ticks()
        source.phase = "draining"
        source.drain(answering, opts.drain_timeout_s)
        if sink is not None:
            sink.close()
            sink = None
        if endpoint is not None:
            endpoint.close()
            source.intake = None
            for why, n in endpoint.refused.items():  # the endpoint's own refusals join the gate's counts
                source.gate.count_rejected(why, n)
        source.phase = "done"
        view_stop.set()
        watching.clear()
        source.shutdown_workers()
        summary = source.loop.ask(lambda: summarize(  # read on the loop, which owns the ledger
            source.ledger, pkg.num_tasks, measured_window(source.ledger, arrivals, start, end, opts.warmup_s),
            source.final_stats, source.backlog_samples, deadline_s, source.gate, source.latencies,
            partial(limit_from_stats, cluster, pkg, mode)), timeout_s=None)
        failures = source.failure_summary()
        recoveries = [e["recovery_s"] for e in failures if e.get("recovery_s") is not None]
        summary.update(node_failures=failures, recovery_s=max(recoveries) if recoveries else None,
                       secure=identity is not None, **link_summary(source.link_reports, source.final_stats),
                       **run_energy(cluster_models(source.node.cluster.nodes), source.final_stats, summary["completed"],
                                    pkg.num_tasks))
        if not source.labelled():  # a camera's frames, an unlabelled folder: no true labels to count against
            summary["accuracy"] = None
        if video:
            frames.close()
            summary["skipped"] = arrivals.skipped
            if frames.error:
                summary["video_error"] = frames.error
        emulation_check(summary, ticks_before, ticks_after)
        for w in summary["emulation_warnings"]:
            log.warning("emulation: %s", w)
    finally:
        view_stop.set()
        watching.clear()
        if sink is not None:
            sink.close()
        if status.is_alive():
            status.join(timeout=2.0)  # its last snapshot says the run is done
        if endpoint is not None:
            endpoint.close()
        source.close()
        _stop_all(procs)
        profiles.remove()
        if ephemeral:
            shutil.rmtree(keys_dir, ignore_errors=True)  # the run's keys die with it
    config = run_config(cluster_path, cluster, opts, mode, admission, opts.net, cluster.emulation)
    summary = run_summary(mode, summary, opts, config, crashed=sorted(set(crashed)),
                          **({"error": source.abort} if source.abort else {}))
    return RunResult(summary, source.ledger, source.timeline, stream.paths if stream is not None else None)


def client_endpoint(source: SourceProcess, cluster: ClusterConfig, pkg: Package,
                    identity: Identity | None) -> ClientEndpoint:
    src = cluster.source
    host = src.host if src.host in ("127.0.0.1", "localhost") else "*"
    endpoint = ClientEndpoint(source.node.ctx, f"tcp://{host}:{src.client_port}", pkg, identity,
                              source.loop.wake)
    endpoint.max_unread_s = max(UNREAD_MIN_S, UNREAD_WAITS * source.gate.max_wait_s)
    source.intake = endpoint
    try:
        endpoint.start()
    except zmq.ZMQError as e:
        endpoint.close()
        raise ClusterError(f"cannot serve clients on {host}:{src.client_port} ({e}); free the port or change "
                           "client_port") from None
    log.warning("serving clients on tcp://%s:%d (%s); Ctrl-C stops", src.host, src.client_port,
                "insecure" if identity is None else "CurveZMQ, client keys in KEYS_DIR/clients/")
    return endpoint


def _stop_all(procs: dict[str, subprocess.Popen], grace_s: float = 3.0) -> None:
    deadline = time.monotonic() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=2)


def run_worker(cluster_path: Path, name: str, mode: str | None, pace: bool = True, insecure: bool = False,
               keys_dir: Path | None = None, key_file: Path | None = None, metrics_port: int | None = None,
               metrics_addr: str | None = None, host_profile: Path | None = None, dilation: float = 1.0) -> int:
    """One worker node, until the source sends shutdown. SIGTERM is a graceful leave (work is handed back);
    Ctrl-C stops at once. ``pace=False``: the links' bandwidths are shaped by the kernel, not paced here."""
    cluster: ClusterConfig = load_cluster(cluster_path)
    try:
        node = cluster.node(name)
    except KeyError:
        raise SystemExit(f"mdiexit: error: no node named {name!r} in {cluster_path} "
                         f"(nodes: {', '.join(n.name for n in cluster.nodes)})") from None
    if node.role != "worker":
        raise SystemExit(f"mdiexit: error: node {name!r} is a {node.role}, not a worker")
    if insecure:
        if not os.environ.get("MDIEXIT_INSECURE_WARNED"):
            log.warning("running INSECURE (--insecure): links are neither authenticated nor encrypted")
        identity = None
    else:
        identity = node_identity(cluster, name, keys_dir or cluster.keys_dir, key_file)
        if identity is None:
            raise SystemExit(f"mdiexit: error: node {name}: no keys (set keys_dir in the cluster file, or pass "
                             "--keys-dir or --key; create them with `mdiexit keys`), or pass --insecure")
    pkg = load_package(cluster.package, check_onnx=True)
    proc = NodeProcess(cluster, name, pkg, mode=mode, pace_bandwidth=pace, identity=identity,
                       metrics_port=metrics_port, metrics_addr=metrics_addr,
                       host_profile=read_profile(host_profile) if host_profile is not None else None,
                       clock=WallClock(dilation))
    signal.signal(signal.SIGTERM, lambda *_: proc.leave_requested.set())
    try:
        proc.serve_forever()
    except KeyboardInterrupt:
        proc.stop.set()
    return 0


def run_joiner(source: str, name: str, workdir: Path, key_file: Path | None, source_key: str | None,
               insecure: bool = False, dilation: float = 1.0, **device) -> int:
    """A device that is not in the cluster file joins the running cluster at `source` (DESIGN §9), then works
    as an ordinary worker. ``device``: host, port, tasks, threads, slowdown, bandwidth_mbps, latency_ms."""
    from mdiexit.protocol.messages import Join
    from mdiexit.runtime.join import join_cluster

    if not insecure and key_file is None:
        raise SystemExit("mdiexit: error: joining needs this device's key (--key N.key_secret, made with "
                         "`mdiexit keys --names N --out DIR`), allowed at the source with `mdiexit keys allow`; "
                         "or --insecure")
    join = Join(sender=name, name=name, **{k: v for k, v in device.items() if v is not None})
    cluster_path = join_cluster(source, join, workdir, None if insecure else key_file, source_key)
    log.warning("%s: joined; cluster view and package in %s", name, workdir)
    return run_worker(cluster_path, name, None, insecure=insecure, key_file=key_file, dilation=dilation)
