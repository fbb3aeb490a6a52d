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

from mdiexit.clock import WallClock
from mdiexit.config import ClusterConfig, load_cluster
from mdiexit.energy import cluster_models, run_energy
from mdiexit.package import Package, load_package
from mdiexit.planner import limit_from_stats
from mdiexit.policies.gate import AdmissionGate
from mdiexit.runtime.device import HostProfiles, planner_costs, profile_nodes, read_profile
from mdiexit.runtime.feed import Feed
from mdiexit.runtime.ledger import Ledger
from mdiexit.runtime.metrics import emulation_check, fairness, host_cpu_ticks, link_summary, summarize
from mdiexit.runtime.node import NodeProcess
from mdiexit.runtime.options import ClusterError, RunOptions
from mdiexit.runtime.report import RunResult
from mdiexit.runtime.runpolicy import capacity_hint, make_admission, make_gate, planned_limits, preflight
from mdiexit.runtime.source import Admission, SourceProcess
from mdiexit.runtime.sourceview import live_view, publish_status
from mdiexit.runtime.summary import run_config, run_summary
from mdiexit.security import Identity, allow_key, create_keys, load_identity, run_keys_dir
from mdiexit.util import shown_path

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
    sources: dict[str, SourceProcess] = field(default_factory=dict)  # every source, the first included

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
    cluster = load_cluster(cluster_path)
    if len(cluster.sources) > 1:  # the bridge is the one source's uplink
        raise NamespaceError(f"--net namespaces: {shown_path(cluster_path)} has {len(cluster.sources)} sources, and "
                             "the namespaces emulate one (its uplink is the bridge); run it with --net app")
    network = NamespaceNetwork(cluster, clock=WallClock(opts.dilation))

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
    """The keys folder of this run: --keys-dir, the cluster file's, or (one machine, no keys configured) a folder
    of ephemeral keys in this user's runtime folder (mode 700: `mdiexit rollout` of this user finds the source's key
    there, and no other user can). None when insecure."""
    if opts.insecure:
        log.warning("running INSECURE (--insecure): links are neither authenticated nor encrypted")
        return None
    keys_dir = opts.keys_dir or cluster.keys_dir
    if cluster.keyless(keys_dir):
        if not ephemeral_ok:
            raise ClusterError("no keys for this cluster: create them with `mdiexit keys --cluster F --out DIR` "
                               "and set keys_dir (or pass --keys-dir), or pass --insecure")
        keys_dir = run_keys_dir(cluster.source.name, cluster.source.port, create=True)
        create_keys([n.name for n in cluster.nodes], keys_dir, overwrite=True)
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
    if opts.serve is not None and all(n.client_port is None for n in cluster.sources):
        raise ClusterError(f"{cluster_path}: no source has a client_port; add `client_port: PORT` to the entry of "
                           "the source that serves clients")
    keys_dir = cluster_keys(cluster, opts, ephemeral_ok=spawn and opts.serve is None)
    ephemeral = keys_dir is not None and keys_dir != (opts.keys_dir or cluster.keys_dir)
    # one feed per source (a camera, a dataset): checked before any node starts
    feeds = [Feed.prepare(cluster, cluster_path, n, opts, pkg) for n in local_sources(cluster, cluster_path, opts)]
    first, others = feeds[0], feeds[1:]  # this process's first source: its live view, status and metrics
    coordinator = first.name == cluster.source.name  # the cluster's first source also shuts the workers down
    # the devices' costs for the planner: the host profile every emulated node takes
    limit_at = planned_limits(cluster, pkg, mode, partial(planner_costs, pkg, cluster))
    workers = [] if rules.single_node else [w.name for w in cluster.workers]
    pace = netns is None  # in namespaces the kernel shapes the bandwidths
    profiles = HostProfiles() if opts.self_profile else \
        profile_nodes(cluster, pkg, [*(f.name for f in feeds), *(workers if spawn else [])])
    for f in feeds:
        f.open_sink()  # a broker: reached now
    clock = WallClock(opts.dilation)  # every node's: the cluster's own time (mdiexit.clock)
    procs = {w: spawn_worker(cluster_path, w, mode, (netns or {}).get(w), pace, keys_dir, profiles.file(w),
                             opts.dilation) for w in workers} if spawn else {}
    for f in feeds:
        policy = admission if f is first and admission is not None else make_admission(pkg, mode, f.opts, limit_at)
        f.proc = SourceProcess(cluster, f.name, pkg, mode=mode, admission=policy, gate=make_gate(opts),
                               pace_bandwidth=pace, identity=node_identity(cluster, f.name, keys_dir),
                               allowed_dir=keys_dir / "allowed" if keys_dir is not None else None,
                               metrics_port=opts.metrics_port if f is first else None,
                               metrics_addr=opts.metrics_addr, host_profile=profiles.of(f.name), clock=clock)
        f.proc.ledger.keep_records = opts.serve is None  # a service keeps counters, not a record of every item
        f.proc.sc.capacity_hint = capacity_hint(f.opts, policy, limit_at)
    source = first.proc
    admission = source.admission
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
                        continue  # a graceful leave: the sources already know
                    crashed.append(name)
                    log.warning("node %s exited unexpectedly with status %s; the run goes on", name, p.returncode)
                    for f in feeds:
                        f.proc.loop.post(partial(f.proc.node_down, name, "crashed", clock.now()))
            clock.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    view_stop = threading.Event()
    local = [f.proc for f in feeds]  # this process's sources, the first first
    status = threading.Thread(target=publish_status, name="status", daemon=True,  # for `mdiexit status`
                              args=(local, view_stop, shown_path(cluster_path)))
    streaming: list[threading.Thread] = []
    try:
        for f in feeds:
            f.proc.start()
        status.start()
        watcher.start()
        if crash_during_start := [w for w in workers if procs.get(w) and procs[w].poll() is not None]:
            raise ClusterError(f"node(s) {', '.join(crash_during_start)} exited during start-up")
        for f in feeds:
            f.proc.wait_ready(workers, opts.ready_timeout_s)
        start_at = clock.now()
        for f in feeds:
            f.proc.run_start = start_at
        if on_ready is not None:
            spawn_args = {"cluster_path": cluster_path, "mode": mode, "pace": pace, "keys_dir": keys_dir,
                          "dilation": opts.dilation}
            live = LiveRun(source, procs, spawn_args, dict(netns or {}), profiles, {f.name: f.proc for f in feeds})
            threading.Thread(target=on_ready, args=(live,), name="on-ready", daemon=True).start()
        viewer = threading.Thread(target=live_view, args=(local, view_stop), daemon=True)
        if opts.live:
            viewer.start()
        ticks_before = host_cpu_ticks()
        for f in feeds:
            f.proc.phase = "admitting"
            f.open(clock, pkg)  # clients, where it serves them: from now on
        duration_s = None if opts.serve is not None else opts.duration_s
        streaming = [threading.Thread(target=f.run, args=(duration_s,), name=f"feed-{f.name}", daemon=True)
                     for f in others]  # the other sources admit and drain beside the first
        for t in streaming:
            t.start()
        first.admit(duration_s)
        ticks_after = host_cpu_ticks()
        first.drain()
        for t in streaming:
            t.join()
        for f in feeds:
            f.proc.phase = "done"
        view_stop.set()
        watching.clear()
        if coordinator:
            source.shutdown_workers()
        for f in others:  # the other sources' own counters, beside the workers'
            source.final_stats[f.name], source.link_reports[f.name] = f.proc.loop.ask(f.proc.own_final_stats)
        summary = site_summary(feeds, source, cluster, pkg, mode)
        failures = source.failure_summary()
        recoveries = [e["recovery_s"] for e in failures if e.get("recovery_s") is not None]
        summary.update(node_failures=failures, recovery_s=max(recoveries) if recoveries else None,
                       secure=keys_dir is not None, **link_summary(source.link_reports, source.final_stats),
                       **run_energy(cluster_models(source.node.cluster.nodes), source.final_stats, summary["completed"],
                                    pkg.num_tasks))
        emulation_check(summary, ticks_before, ticks_after, cluster.emulation)
        for w in summary["emulation_warnings"]:
            log.warning("emulation: %s", w)
    finally:
        view_stop.set()
        watching.clear()
        for f in feeds:
            f.close()
        if status.is_alive():
            status.join(timeout=2.0)  # its last snapshot says the run is done
        for f in feeds:
            if f.proc is not None:
                f.proc.close()
        _stop_all(procs)
        profiles.remove()
        if ephemeral:
            shutil.rmtree(keys_dir, ignore_errors=True)  # the run's keys die with it
    config = run_config(cluster_path, cluster, first.opts, mode, admission, opts.net, cluster.emulation)
    errors = [f"{f.name}: {f.proc.abort}" if len(feeds) > 1 else f.proc.abort for f in feeds if f.proc.abort]
    summary = run_summary(mode, summary, opts, config, crashed=sorted(set(crashed)),
                          **({"error": "; ".join(errors)} if errors else {}))
    return RunResult(summary, source.ledger, source.timeline, first.stream.paths if first.stream is not None else None,
                     ledgers={f.name: f.proc.ledger for f in feeds},
                     source_paths={f.name: f.stream.paths if f.stream is not None else None for f in feeds})


def local_sources(cluster: ClusterConfig, cluster_path: Path, opts: RunOptions) -> list:
    """The sources this process runs: every one, or those ``opts.sources`` names (each on its own machine)."""
    if opts.sources is None:
        return list(cluster.sources)
    names = {n.name for n in cluster.sources}
    if unknown := [s for s in opts.sources if s not in names]:
        raise ClusterError(f"--name {', '.join(unknown)}: not a source of {shown_path(cluster_path)}; its sources "
                           f"are {', '.join(n.name for n in cluster.sources)}")
    return [n for n in cluster.sources if n.name in opts.sources]


def site_summary(feeds: list[Feed], source: SourceProcess, cluster: ClusterConfig, pkg: Package, mode: str) -> dict:
    """The run's figures over every source (read on each source's loop, which owns its ledger), with each
    source's part and the fairness between them."""
    parts = {f.name: f.proc.loop.ask(f.part, timeout_s=None) for f in feeds}
    # the site's counts over every source; each has drained, so its ledger takes only late, redundant results now
    gate = AdmissionGate.combined([f.proc.gate for f in feeds])
    latencies = [x for f in feeds for x in f.proc.latencies]
    windows = [f.window() for f in feeds]
    window = (min(w[0] for w in windows), max(w[1] for w in windows))
    deadline_s = None if feeds[0].opts.deadline_ms is None else feeds[0].opts.deadline_ms / 1000
    summary = source.loop.ask(lambda: summarize(
        Ledger.combined({f.name: f.proc.ledger for f in feeds}), pkg.num_tasks, window, source.final_stats,
        source.backlog_samples, deadline_s, gate, latencies, partial(limit_from_stats, cluster, pkg, mode)),
        timeout_s=None)
    if not any(f.proc.labelled() for f in feeds):  # a camera's frames, an unlabelled folder: no labels to count
        summary["accuracy"] = None
    skipped = sum(f.skipped for f in feeds)
    if skipped or any(f.video is not None for f in feeds):
        summary["skipped"] = skipped
    if errors := [f.frames.error for f in feeds if f.frames is not None and f.frames.error]:
        summary["video_error"] = "; ".join(errors)
    summary["sources"] = parts
    summary["fairness_jain"] = fairness(parts)
    rollouts = [r for f in feeds for r in f.proc.loop.ask(f.proc.rollout_records, timeout_s=None)]
    if rollouts:
        summary["rollouts"] = rollouts
    return summary


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
