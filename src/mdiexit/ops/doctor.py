"""`mdiexit doctor`: everything one device needs before it joins the site, checked on that device.

Each check ends `pass`, `warn` (the node will run, but something deserves a look) or `fail` (it will not run as
configured), with what was found and, unless it passed, the fix. `mdiexit doctor` exits 1 when any check failed.
The checks: the cluster file and the node's entry; the keys and their modes; the package and its version
against the source's; ONNX Runtime and its providers; the clock; each neighbour, through a real CurveZMQ
handshake with this node's key; the node's ports; the device's measured speed against its entry; free disk.
"""

from __future__ import annotations

import errno
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from mdiexit.config import BASE_RATED_GMACS, ClusterConfig, ConfigError, NodeConfig, load_cluster

HANDSHAKE_TIMEOUT_S = 3.0
SPEED_TOLERANCE = 2.0  # measured against expected speed, either way, before it is worth a warning
DISK_SPARE_BYTES = 200 << 20


class Check(msgspec.Struct, frozen=True):
    name: str
    outcome: str  # pass | warn | fail
    found: str
    fix: str = ""


@dataclass
class Site:
    """What the checks share: the cluster, this node, and what earlier checks loaded."""

    cluster_file: Path
    name: str
    cluster: ClusterConfig | None = None
    node: NodeConfig | None = None
    identity: object | None = None  # security.Identity, once the keys check passed
    package: object | None = None  # package.Package, once the package check passed


def run_checks(cluster_file: Path, name: str | None, progress: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in order; a check that needs what an earlier one failed to load is skipped with that reason."""
    site = Site(cluster_file, name or "")
    checks: list[Check] = []
    for check in (check_cluster, check_keys, check_package, check_onnxruntime, check_clock, check_neighbours,
                  check_ports, check_speed, check_disk):
        found = check(site)
        for c in found if isinstance(found, list) else [found]:
            checks.append(c)
            if progress is not None:
                progress(c)
    return checks


def check_cluster(site: Site) -> Check:
    try:
        site.cluster = load_cluster(site.cluster_file)
    except (ConfigError, OSError) as e:
        return Check("cluster file", "fail", str(e), "fix the cluster file as the message says")
    names = [n.name for n in site.cluster.nodes]
    if not site.name:
        site.name = site.cluster.source.name
    if site.name not in names:
        return Check("cluster file", "fail", f"no node {site.name!r} in {site.cluster_file} (nodes: "
                                             f"{', '.join(names)})", "pass --name with this device's name in the "
                                                                     "cluster file")
    site.node = site.cluster.node(site.name)
    return Check("cluster file", "pass", f"{site.cluster_file}: node {site.name} ({site.node.role}) of {len(names)}")


def check_keys(site: Site) -> Check:
    if site.cluster is None or site.node is None:
        return Check("keys", "fail", "skipped: the cluster file did not load", "fix the cluster file first")
    from mdiexit.security import KeyFileError, load_identity

    keys_dir = site.cluster.keys_dir
    if keys_dir is None and not any(n.public_key for n in site.cluster.nodes):
        return Check("keys", "warn", "no keys_dir and no public keys: only a one-machine `mdiexit run` works (it "
                                     "makes ephemeral keys)",
                     f"mdiexit keys --cluster {site.cluster_file} --out KEYS_DIR, then set keys_dir in the file")
    if keys_dir is not None and not keys_dir.is_dir():
        return Check("keys", "fail", f"keys_dir {keys_dir} does not exist",
                     f"mdiexit keys --cluster {site.cluster_file} --out {keys_dir}, or fix keys_dir")
    try:
        site.identity = load_identity(site.name, site.cluster.public_keys(), keys_dir)
    except KeyFileError as e:
        return Check("keys", "fail", str(e), _key_fix(str(e)))
    missing = [n.name for n in site.cluster.nodes if n.name not in site.identity.peers]
    if missing:
        return Check("keys", "fail", f"no public key for {', '.join(missing)}",
                     f"copy {', '.join(m + '.key' for m in missing)} into {keys_dir}")
    mode = stat.S_IMODE(keys_dir.stat().st_mode) if keys_dir is not None else 0
    if mode & 0o022:
        return Check("keys", "warn", f"{keys_dir} is writable by others (mode {mode:o})", f"chmod go-w {keys_dir}")
    return Check("keys", "pass", f"{site.name}'s secret key (mode 600) and {len(site.identity.peers)} public keys")


def _key_fix(message: str) -> str:
    if "readable by others" in message:
        return message.split("; ", 1)[-1]
    return "create the keys with `mdiexit keys --cluster F --out DIR` and copy this node's .key_secret here"


def check_package(site: Site) -> Check:
    if site.cluster is None:
        return Check("package", "fail", "skipped: the cluster file did not load", "fix the cluster file first")
    from mdiexit.ops.status import StatusError, read_status
    from mdiexit.package import PackageError, load_package

    try:
        site.package = pkg = load_package(site.cluster.package, check_onnx=True)
    except PackageError as e:
        return Check("package", "fail", str(e), f"copy the source's package to {site.cluster.package}")
    source = site.cluster.source
    try:
        theirs = read_status(source.name, source.port)[0].package
    except StatusError:
        theirs = None
    if site.name == source.name or theirs is None:
        where = "" if site.name == source.name else " (the source's is not readable here: compare with " \
                                                   "`mdiexit status` on the source)"
        return Check("package", "pass", f"{pkg.version}, {pkg.num_tasks} tasks{where}")
    if theirs != pkg.version:
        return Check("package", "fail", f"{pkg.version} here, {theirs} at the source",
                     f"copy the source's package to {site.cluster.package}")
    return Check("package", "pass", f"{pkg.version}, the source's")


def check_onnxruntime(site: Site) -> Check:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return Check("ONNX Runtime", "fail", f"cannot import onnxruntime ({e})", "pip install 'mdiexit'")
    providers = ort.get_available_providers()
    if "CPUExecutionProvider" not in providers:
        return Check("ONNX Runtime", "fail", f"{ort.__version__} without the CPU provider ({providers})",
                     "reinstall onnxruntime (pip install --force-reinstall onnxruntime)")
    return Check("ONNX Runtime", "pass", f"{ort.__version__}, providers {', '.join(providers)}")


def check_clock(site: Site) -> Check:
    """The runtime needs no synchronised clocks (deadlines and link estimates use each node's own clock and
    round trips), but logs and results are compared across devices by their time: NTP should be on."""
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                             text=True, timeout=5)
        synced = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        synced = ""
    if synced == "yes":
        return Check("clock", "pass", "synchronised by NTP")
    if synced == "no":
        return Check("clock", "warn", "not synchronised (NTP off or unreachable): the run is unaffected, logs "
                                      "across devices are harder to compare", "timedatectl set-ntp true")
    return Check("clock", "warn", "cannot tell whether the clock is synchronised (no timedatectl)",
                 "check NTP (chrony or systemd-timesyncd) on this device")


def check_neighbours(site: Site) -> list[Check]:
    if site.cluster is None or site.node is None:
        return [Check("neighbours", "fail", "skipped: the cluster file did not load", "fix the cluster file first")]
    if site.identity is None:
        return [Check("neighbours", "warn", "skipped: no keys to handshake with", "fix the keys check first")]
    return [handshake(site, site.cluster.node(peer)) for peer in site.cluster.neighbours_of(site.name)]


def handshake(site: Site, peer: NodeConfig) -> Check:
    """Connect to the peer's inbox as this node (CurveZMQ client, the peer's key as the server's) and wait for
    the handshake: proof that the address is reachable, that the peer is who its key says, and that it accepts
    this node's key. Nothing is sent."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from mdiexit.security import make_client

    name = f"neighbour {peer.name}"
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    failed = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | \
        zmq.EVENT_HANDSHAKE_FAILED_AUTH
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | failed | zmq.EVENT_CONNECT_RETRIED)
    try:
        make_client(sock, site.identity, peer.name)
        sock.connect(peer.address)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000)):
                break
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return Check(name, "pass", f"{peer.address}: CurveZMQ handshake done")
            if event & failed:
                return Check(name, "fail", f"{peer.address} refused the handshake: it does not accept this node's "
                                           "key, or the key in the cluster file is not its own",
                             "give every device the same public keys (KEYS_DIR/*.key from `mdiexit keys`)")
            if event == zmq.EVENT_CONNECT_RETRIED:  # the connection was refused: nothing listens there
                return Check(name, "warn", f"{peer.address}: nothing listens (is its node running?)",
                             f"start it (`mdiexit worker --cluster F --name {peer.name}`), or check host and "
                             "port")
        return Check(name, "warn", f"{peer.address}: no answer within {HANDSHAKE_TIMEOUT_S:.0f} s",
                     "check the route and the firewall between the devices")
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def check_ports(site: Site) -> list[Check]:
    if site.node is None:
        return [Check("ports", "fail", "skipped: the cluster file did not load", "fix the cluster file first")]
    node = site.node
    wanted = {"port": node.port, "client_port": node.client_port, "metrics_port": node.metrics_port}
    checks = []
    for field, port in wanted.items():
        if port is None:
            continue
        host = node.host if field != "metrics_port" else "127.0.0.1"
        with socket.socket() as s:
            try:
                s.bind((host, port))
                checks.append(Check(f"{field} {port}", "pass", f"free on {host}"))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    checks.append(Check(f"{field} {port}", "warn", f"in use on {host} (this node running already?)",
                                        f"stop what holds it (ss -ltnp 'sport = :{port}') or change {field}"))
                else:
                    checks.append(Check(f"{field} {port}", "fail", f"cannot listen on {host}:{port} ({e.strerror})",
                                        "set host to an address of this device in the cluster file"))
    return checks


def check_speed(site: Site) -> Check:
    """The whole model, batch 1, timed here. An emulated device (slowdown > 1) is this host slowed down, so the
    figure is what it emulates. A real one is compared with the speed its entry declares (rated_gmacs) for the
    first service-time estimates; the runtime measures service times as it runs, so a gap is a warning: the first
    seconds route on wrong estimates."""
    if site.package is None or site.node is None:
        return Check("speed", "warn", "skipped: no package to time", "fix the package check first")
    from mdiexit.engine import OrtEngine

    pkg, node = site.package, site.node
    engine = OrtEngine(pkg, threads=node.threads)
    x = np.zeros((1, *pkg.input_shape), dtype=np.uint8)
    seconds = []
    for repeat in range(12):
        t0 = time.perf_counter()
        features = x
        for task in pkg.tasks:
            features, _ = engine.run(task.index, features)
        if repeat >= 2:  # the first runs warm the sessions up
            seconds.append(time.perf_counter() - t0)
    host_s = float(np.median(seconds))
    gmacs = pkg.full_macs / host_s / 1e9
    if node.slowdown > 1:
        emulated_ms = 1000 * host_s * node.slowdown
        return Check("speed", "pass", f"the whole model takes {1000 * host_s:.2f} ms an item here; {node.name} "
                                      f"emulates a device {node.slowdown:g}x slower ({emulated_ms:.1f} ms)")
    found = f"the whole model takes {1000 * host_s:.2f} ms an item here: {gmacs:.2f} GMAC/s"
    if node.rated_gmacs is None:
        return Check("speed", "pass", found + f" (no rated_gmacs: first estimates assume {BASE_RATED_GMACS:g})")
    ratio = gmacs / node.rated_gmacs
    found += f" against rated_gmacs {node.rated_gmacs:g}"
    if 1 / SPEED_TOLERANCE <= ratio <= SPEED_TOLERANCE:
        return Check("speed", "pass", found)
    return Check("speed", "warn", found, f"set rated_gmacs: {gmacs:.2f} on {node.name} in the cluster file")


def check_disk(site: Site) -> Check:
    where = site.cluster.package if site.cluster is not None else Path.cwd()
    where = where if where.exists() else Path.cwd()
    free = shutil.disk_usage(where).free
    size = sum(p.stat().st_size for p in where.rglob("*") if p.is_file()) if where.is_dir() else 0
    need = 2 * size + DISK_SPARE_BYTES  # a second version during a roll-out, and the results
    found = f"{free / 2**30:.1f} GiB free at {where}; the package takes {size / 2**20:.1f} MiB"
    if free < size:
        return Check("disk", "fail", found, "free some space: a package update would not fit")
    if free < need:
        return Check("disk", "warn", found, f"keep at least {need / 2**20:.0f} MiB free (two package versions and "
                                            "the results)")
    return Check("disk", "pass", found)


def print_checks(checks: list[Check], file=None) -> None:
    import sys

    out = file or sys.stdout
    mark = {"pass": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for c in checks:
        print(f"[{mark[c.outcome]}] {c.name}: {c.found}", file=out)
        if c.outcome != "pass" and c.fix:
            print(f"       fix: {c.fix}", file=out)
    failed = sum(c.outcome == "fail" for c in checks)
    warned = sum(c.outcome == "warn" for c in checks)
    print(f"{len(checks)} checks: {len(checks) - failed - warned} ok, {warned} warnings, {failed} failed", file=out)
