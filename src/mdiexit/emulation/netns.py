"""Kernel-shaped edge network on one Linux machine (DESIGN §7, `--net namespaces`; needs root).

    with NamespaceNetwork(cluster) as net:       # net.nodes: name -> (namespace or None, address)
        spawn workers with `ip netns exec <net.nodes[w][0]> ...` on net.cluster_path

Layout: a Linux bridge ``{prefix}-br`` in the root namespace holds 10.77.0.1/24; the SOURCE stays in the root
namespace and listens there. Worker i (0-based, in cluster-file order) gets its own namespace
``{prefix}-{name}``, joined to the bridge by a veth pair ``{prefix}-{i}h`` (bridge side) / ``{prefix}-{i}n``
(namespace side, 10.77.0.{i+2}/24), with ``lo`` up. Shaping is `tc ... tbf` on egress only:

- a worker's egress (to the source and to other workers) on its namespace-side veth, at its ``bandwidth_mbps``;
- the source's egress on the bridge device (what the root namespace sends into the bridge), at its bandwidth.

So a node's sends to all its peers share its access link, as with the app-level pacer; ingress is not shaped.
This kernel has no netem, so latency stays in the application. A node's ``bandwidth_schedule`` is followed from
:meth:`NamespaceNetwork.start_schedules` (the run's start) by a thread that runs ``tc qdisc replace ... tbf`` at
each change (``replace`` also adds the qdisc of a node that had no bandwidth before).

The default prefix is ``mx`` + the owner's pid in base 36, so interface names stay <= 15 characters and
:func:`cleanup_stale` can tell a crashed run (owner gone) from a live one. Everything created is removed on
exit, on exceptions and on Ctrl-C; already-gone objects are ignored. Only one run at a time can hold
10.77.0.0/24 in the root namespace: a second one is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

from mdiexit.clock import REAL_TIME, WallClock
from mdiexit.config import ClusterConfig, load_cluster, write_cluster

SUBNET = "10.77.0"
PREFIX_LEN = 24
BRIDGE_ADDRESS = f"{SUBNET}.1"
MAX_WORKERS = 250  # 10.77.0.2 .. 10.77.0.251
DEFAULT_PATTERN = r"mx[0-9a-z]{1,6}"  # prefixes made by default_prefix()
TBF_BURST_BYTES = 32 * 1024
TBF_LATENCY_MS = 50
IFNAMSIZ = 15
_TIMEOUT_S = 10
log = logging.getLogger("mdiexit.netns")


class NamespaceError(RuntimeError):
    """Namespaces cannot be used here, or setting them up failed. The message says why."""


class Namespaces(NamedTuple):
    """What :class:`NamespaceNetwork` yields (also unpacks as ``nodes, cluster, cluster_path``)."""

    nodes: dict[str, tuple[str | None, str]]  # node name -> (namespace or None for the source, IPv4 address)
    cluster: ClusterConfig  # every node's host rewritten to its namespace address
    cluster_path: Path  # the same, as a cluster file for the workers (in a temporary folder)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def default_prefix(pid: int | None = None) -> str:
    """``mx`` + pid in base 36 (at most 8 characters)."""
    return "mx" + _base36(os.getpid() if pid is None else pid)


def _owner_pid(prefix: str) -> int | None:
    m = re.fullmatch(r"mx([0-9a-z]{1,6})", prefix)
    return int(m.group(1), 36) if m else None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {e}") from None
    if check and r.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {r.stderr.strip() or r.returncode}")
    return r


def _tc(*args: str) -> None:
    try:
        r = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NamespaceError(f"`tc {' '.join(args)}` failed: {e}") from None
    if r.returncode != 0:
        raise NamespaceError(f"`tc {' '.join(args)}` failed: {r.stderr.strip() or r.returncode}")


def tbf_args(bandwidth_mbps: float) -> list[str]:
    """`tbf rate ... burst ... latency ...` for a link of ``bandwidth_mbps``; the burst grows with the rate
    so that fast links are not limited by timer granularity (>= 32 KiB, >= 4 ms worth of bytes)."""
    rate_bps = max(1, round(bandwidth_mbps * 1e6))
    burst = max(TBF_BURST_BYTES, rate_bps // 8 // 250)
    return ["tbf", "rate", f"{rate_bps}bit", "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms"]


def list_namespaces() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def list_links() -> list[str]:
    """Interface names in the root namespace."""
    r = _ip("-o", "link", "show", check=False)
    names = []
    for line in r.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _prefix_of(name: str, pattern: str) -> str | None:
    m = re.match(rf"^({pattern})-", name)
    return m.group(1) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix_pattern: str = DEFAULT_PATTERN, only_dead: bool = True) -> list[str]:
    """Remove namespaces and root-namespace interfaces named ``<prefix>-...`` where ``<prefix>`` full-matches
    the regex ``prefix_pattern`` (leftovers of a crashed run). With ``only_dead``, a prefix made by
    :func:`default_prefix` whose owner process is still alive is left alone. Returns what was removed."""

    def stale(prefix: str | None) -> bool:
        if prefix is None:
            return False
        pid = _owner_pid(prefix)
        return not (only_dead and pid is not None and _alive(pid))

    removed = []
    links = [n for n in list_links() if stale(_prefix_of(n, prefix_pattern))]
    for name in sorted(links, key=lambda n: n.endswith("-br")):  # veths first, bridges last
        if _ip("link", "del", name, check=False).returncode == 0:
            removed.append(name)
    for ns in list_namespaces():
        if stale(_prefix_of(ns, prefix_pattern)) and _ip("netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    return removed


def namespaces_supported() -> tuple[bool, str]:
    """(True, "") when `--net namespaces` can work here, else (False, why)."""
    if not os.uname().sysname == "Linux":
        return False, "--net namespaces needs Linux network namespaces"
    if os.geteuid() != 0:
        return False, "--net namespaces needs root (network namespaces, veth pairs and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"--net namespaces needs the `{tool}` command (iproute2)"
    probe = f"{default_prefix()}-probe"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return False, f"cannot create a network namespace ({r.stderr.strip()})"
    _ip("netns", "del", probe, check=False)
    return True, ""


class NamespaceNetwork(contextlib.AbstractContextManager):
    """Bridge + one namespace per worker, tbf-shaped; see the module docstring. Yields :class:`Namespaces`."""

    def __init__(self, cluster: ClusterConfig, prefix: str | None = None, clock: WallClock = REAL_TIME):
        self.cluster = cluster
        self.clock = clock  # dilated k times, every link is shaped k times slower
        self.prefix = prefix or default_prefix()
        self.bridge = f"{self.prefix}-br"
        workers = cluster.workers
        if len(workers) > MAX_WORKERS:
            raise NamespaceError(f"--net namespaces supports at most {MAX_WORKERS} workers, got {len(workers)}")
        longest = f"{self.prefix}-{max(len(workers) - 1, 0)}h"
        if len(longest) > IFNAMSIZ or len(self.bridge) > IFNAMSIZ:
            raise NamespaceError(f"prefix {self.prefix!r} is too long: interface {longest!r} would exceed "
                                 f"{IFNAMSIZ} characters")
        self.plan: list[tuple[str, str, str, str, float | None]] = []  # (name, ns, host veth, ns veth, bw)
        for i, w in enumerate(workers):
            self.plan.append((w.name, f"{self.prefix}-{w.name}", f"{self.prefix}-{i}h", f"{self.prefix}-{i}n",
                              w.bandwidth_mbps))
        self._links: list[str] = []  # created root-namespace interfaces, bridge first
        self._namespaces: list[str] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        # (namespace or None, device, schedule) of every node with a bandwidth schedule
        self.schedules = [(None, self.bridge, cluster.source.bandwidth_schedule)] if cluster.source.bandwidth_schedule \
            else []
        self.schedules += [(ns, ns_if, w.bandwidth_schedule) for (_, ns, _, ns_if, _), w in zip(self.plan, workers,
                                                                                                 strict=True)
                           if w.bandwidth_schedule]
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> Namespaces:
        try:
            return self._setup()
        except BaseException:
            self.close()
            raise

    def _check_free(self) -> None:
        r = _ip("-o", "-4", "addr", "show", check=False)
        for line in r.stdout.splitlines():
            if f" {SUBNET}." in line:
                dev = line.split()[1]
                raise NamespaceError(f"{SUBNET}.0/{PREFIX_LEN} is already in use by {dev} in the root namespace "
                                     f"(another `--net namespaces` run? leftovers are removed by "
                                     f"mdiexit.emulation.netns.cleanup_stale())")
        taken = set(list_namespaces())
        for _, ns, *_ in self.plan:
            if ns in taken:
                raise NamespaceError(f"network namespace {ns} already exists")

    def _setup(self) -> Namespaces:
        self._check_free()
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        src = self.cluster.source
        if src.bandwidth_mbps is not None:
            _tc("qdisc", "add", "dev", self.bridge, "root", *self._tbf(src.bandwidth_mbps))
        nodes: dict[str, tuple[str | None, str]] = {src.name: (None, BRIDGE_ADDRESS)}
        for i, (name, ns, host_if, ns_if, bw) in enumerate(self.plan):
            addr = f"{SUBNET}.{i + 2}"
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
            self._links.append(host_if)
            _ip("link", "set", host_if, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", ns_if)
            _ip("-n", ns, "link", "set", ns_if, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            if bw is not None:
                _tc("-n", ns, "qdisc", "add", "dev", ns_if, "root", *self._tbf(bw))
            nodes[name] = (ns, addr)
        hosts = {name: addr for name, (_, addr) in nodes.items()}
        self._tmp = tempfile.TemporaryDirectory(prefix=f"mdiexit-{self.prefix}-")
        path = write_cluster(Path(self._tmp.name) / "cluster.yaml", self.cluster,
                             every_node=lambda n: {"host": hosts[n["name"]]})
        return Namespaces(nodes, load_cluster(path), path)

    def _tbf(self, mbps: float) -> list[str]:
        return tbf_args(mbps / self.clock.factor)  # a link of the cluster's, in the host's time

    # ------------------------------------------------------------------ schedules
    def start_schedules(self, origin: float) -> None:
        """Follow every node's bandwidth schedule, its times counted from ``origin`` (on the run's clock)."""
        changes = sorted(((origin + t_s, ns, dev, mbps) for ns, dev, sched in self.schedules for t_s, mbps in sched),
                         key=lambda c: c[0])
        if changes and self._follower is None:
            self._follower = threading.Thread(target=self._follow, args=(changes,), name="tc-schedule", daemon=True)
            self._follower.start()

    def _follow(self, changes: list[tuple[float, str | None, str, float]]) -> None:
        for at, ns, dev, mbps in changes:
            if self._stop.wait(self.clock.wall_s(max(0.0, at - self.clock.now()))):
                return
            try:
                _tc(*(("-n", ns) if ns else ()), "qdisc", "replace", "dev", dev, "root", *self._tbf(mbps))
            except NamespaceError as e:
                log.warning("bandwidth schedule: %s", e)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Remove everything this network created (idempotent; already-gone objects are ignored)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=_TIMEOUT_S)
            self._follower = None
        for args in [("link", "del", name) for name in reversed(self._links)] + \
                [("netns", "del", ns) for ns in reversed(self._namespaces)]:
            # veths first (each takes its peer along), then the bridge, then the namespaces
            with contextlib.suppress(NamespaceError):
                _ip(*args, check=False)
        self._links.clear()
        self._namespaces.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __exit__(self, *exc) -> None:
        self.close()
