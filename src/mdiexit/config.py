"""The cluster file (DESIGN §4): nodes, neighbour graph, model package, mode and policy parameters.

    cfg = load_cluster("examples/edge4.yaml")   # raises ConfigError naming the field, e.g.
    # ConfigError: nodes[2].slowdown: expected a number >= 1, got 'fast'

YAML layout (flat; unknown keys are rejected so that typos do not pass silently)::

    package: models/mobilenetv2-fmnist
    mode: mdi-exit                  # local | ddi | ddi-exit | mdi | mdi-static | mdi-exit
    hysteresis_ms: 2                # and hop_limit, stale_after_ms, heartbeat_ms, max_batch
    nodes:
      - {name: src, role: source, port: 5550, slowdown: 8, bandwidth_mbps: 50, latency_ms: 2}
      - {name: w1, role: worker, port: 5551, tasks: [2, 3], slowdown: 4}
    neighbours:                     # optional; default: full mesh. n -> whom n may send DATA to
      src: [w1]

A node's ``bandwidth_mbps``/``latency_ms`` describe its access link: everything it sends shares that egress
bandwidth, and the path n->m pays both ends' latencies (:meth:`ClusterConfig.link`). RESULTs go to the source directly,
whatever the neighbour graph says.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mdiexit.policies.offload import OffloadConfig

MODES = ("local", "ddi", "ddi-exit", "mdi", "mdi-static", "mdi-exit")
ROLES = ("source", "worker")
COMPRESS = ("off", "on", "auto")
WIRE_CODECS = ("raw", "lz4", "zstd")
BASE_RATED_GMACS = 4.0  # assumed speed of an un-slowed node, for initial service-time estimates
MAX_HEARTBEAT_MS = 100.0  # DESIGN §3.2: a STATE at least every 100 ms
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ConfigError(Exception):
    """The cluster file is invalid. The message names the field."""


@dataclass(frozen=True)
class NodeConfig:
    """One node (process): where it listens, what it holds, and how its device and link are emulated."""

    name: str
    port: int
    role: str = "worker"  # "source" | "worker"
    host: str = "127.0.0.1"
    tasks: tuple[int, ...] | None = None  # 1-based task indices; None = all tasks
    threads: int = 1
    slowdown: float = 1.0
    bandwidth_mbps: float | None = None  # None = unlimited
    latency_ms: float = 0.0
    compress: str = "off"  # learned feature codes on this node's egress: "off" | "on" | "auto"
    wire_codec: str = "raw"  # lossless compression of array frames on this node's egress: raw | lz4 | zstd
    rated_gmacs: float | None = None  # None = BASE_RATED_GMACS / slowdown
    public_key: str | None = None  # CurveZMQ public key (Z85); None: KEYS_DIR/NAME.key

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def rated_macs_per_s(self) -> float:
        """Rated speed used for initial service-time estimates."""
        g = self.rated_gmacs if self.rated_gmacs is not None else BASE_RATED_GMACS / self.slowdown
        return g * 1e9

    def holds(self, task: int) -> bool:
        return self.tasks is None or task in self.tasks

    def held_tasks(self, num_tasks: int) -> frozenset[int]:
        """The tasks this node holds, for a model with ``num_tasks`` tasks."""
        return frozenset(range(1, num_tasks + 1)) if self.tasks is None else frozenset(self.tasks)


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster file, validated."""

    nodes: tuple[NodeConfig, ...]
    package: Path
    mode: str = "mdi-exit"
    neighbours: dict[str, tuple[str, ...]] = field(default_factory=dict)  # filled with the full mesh if empty
    hysteresis_ms: float = 2.0
    hop_limit: int = 4
    stale_after_ms: float = 500.0
    heartbeat_ms: float = 50.0
    max_batch: int = 8  # dynamic batching: up to this many queued items of one task per engine call (never waits)
    dead_after_ms: float = 1000.0  # no report for this long: the node is down, nobody routes to it (DESIGN §9)
    keys_dir: Path | None = None  # node keys (`mdiexit keys`): NAME.key_secret for itself, NAME.key for peers
    path: Path | None = None  # the file it was loaded from

    @property
    def source(self) -> NodeConfig:
        return next(n for n in self.nodes if n.role == "source")

    @property
    def workers(self) -> tuple[NodeConfig, ...]:
        return tuple(n for n in self.nodes if n.role == "worker")

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}")

    def neighbours_of(self, name: str) -> tuple[str, ...]:
        return self.neighbours.get(name, ())

    def senders_to(self, name: str) -> tuple[str, ...]:
        """The nodes that may send ``name`` DATA: it reports its state to them too (DESIGN §9)."""
        return tuple(n for n, nb in self.neighbours.items() if name in nb)

    def public_keys(self) -> dict[str, str | None]:
        return {n.name: n.public_key for n in self.nodes}

    def link(self, src: str, dst: str) -> tuple[float | None, float]:
        """(bandwidth in bit/s or None for unlimited, latency in s) of the path src -> dst: the sender's egress
        bandwidth (shared by all its sends, as on a device's one uplink) and both ends' latencies."""
        a, b = self.node(src), self.node(dst)
        bw = a.bandwidth_mbps * 1e6 if a.bandwidth_mbps is not None else None
        return bw, (a.latency_ms + b.latency_ms) / 1000.0

    def offload_config(self) -> OffloadConfig:
        return OffloadConfig(hysteresis_s=self.hysteresis_ms / 1000.0, hop_limit=self.hop_limit,
                             stale_after_s=self.stale_after_ms / 1000.0)

    def check_tasks(self, num_tasks: int) -> None:
        """Check the nodes' task lists against a model with ``num_tasks`` tasks, and that each is held."""
        held: set[int] = set()
        for i, n in enumerate(self.nodes):
            for t in n.tasks or ():
                if t > num_tasks:
                    raise ConfigError(f"nodes[{i}].tasks: task {t} does not exist "
                                      f"(the model has {num_tasks})")
            held |= n.held_tasks(num_tasks)
        missing = sorted(set(range(1, num_tasks + 1)) - held)
        if missing:
            raise ConfigError(f"nodes: no node holds task(s) {missing}")

    def check_reachable(self, num_tasks: int, source_computes: bool = True, offload_later: bool = True) -> None:
        """Every task must be reachable from the source along the neighbour graph, for a mode whose source
        computes (or not) and whose workers pass items on (or not, as in DDI). The error names the task."""
        src = self.source.name

        def holds(node: str, task: int) -> bool:
            n = self.node(node)
            return (source_computes or n.role != "source") and task in n.held_tasks(num_tasks)

        if not offload_later:  # DDI: one node runs every task of an item it received from the source
            if not any(all(holds(m, t) for t in range(1, num_tasks + 1)) for m in (src, *self.neighbours_of(src))):
                raise ConfigError(f"neighbours.{src}: no neighbour of the source holds every task, "
                                  "as DDI modes need (give one all tasks, or link the source to one that does)")
            return
        # states: (node, next task); an item moves to a neighbour that holds its next task, or runs it here
        seen, todo = {(src, 1)}, [(src, 1)]
        while todo:
            node, task = todo.pop()
            nxt = [(m, task) for m in self.neighbours_of(node) if task <= num_tasks and holds(m, task)]
            if task <= num_tasks and holds(node, task):
                nxt.append((node, task + 1))
            for s in nxt:
                if s not in seen:
                    seen.add(s)
                    todo.append(s)
        for task in range(1, num_tasks + 1):
            if not any((n, task + 1) in seen for n in self.neighbours):
                holders = [n.name for n in self.nodes if holds(n.name, task)]
                raise ConfigError(f"neighbours: task {task} is unreachable from the source {src!r}: "
                                  f"it is held by {', '.join(holders) or 'no node'}, which the items that "
                                  f"need it cannot reach along the neighbour graph; add a link to one of them")


# ------------------------------------------------------------------ field checks

def _describe(v: Any) -> str:
    return f"{v!r:.60}"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _number(d: dict, key: str, where: str, default: Any, lo: float | None = None, lo_open: bool = False,
            hi: float | None = None, allow_none: bool = False) -> Any:
    """d[key] as a float within bounds; ``where`` is the field prefix ("nodes[2]." or "")."""
    v = d.get(key, default)
    if v is None and allow_none:
        return None
    if not (_is_num(v) and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)):
        bounds = ([f"{'>' if lo_open else '>='} {lo:g}"] if lo is not None else []) + \
                 ([f"<= {hi:g}"] if hi is not None else [])
        extra = " (or null)" if allow_none else ""
        raise ConfigError(f"{where}{key}: expected a number {' and '.join(bounds)}{extra}, "
                          f"got {_describe(v)}")
    return float(v)


def _int(d: dict, key: str, where: str, default: Any, lo: int, hi: int | None = None) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{where}{key}: expected an integer {rng}, got {_describe(v)}")
    return v


def _choice(d: dict, key: str, where: str, default: str, choices: tuple[str, ...]) -> str:
    v = d.get(key, default)
    if v not in choices or not isinstance(v, str):
        raise ConfigError(f"{where}{key}: expected one of {', '.join(choices)}, got {_describe(v)}")
    return v


def _unknown(d: dict, allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in d if k not in allowed)
    if extra:
        raise ConfigError(f"{where}{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


_NODE_KEYS = {"name", "host", "port", "role", "tasks", "threads", "slowdown", "bandwidth_mbps", "latency_ms",
              "compress", "wire_codec", "rated_gmacs", "public_key"}
_TOP_KEYS = {"nodes", "neighbours", "package", "mode", "hysteresis_ms", "hop_limit", "stale_after_ms",
             "heartbeat_ms", "max_batch", "dead_after_ms", "keys_dir"}


def _node(d: Any, i: int) -> NodeConfig:
    w = f"nodes[{i}]"
    if not isinstance(d, dict):
        raise ConfigError(f"{w}: expected a mapping, got {_describe(d)}")
    _unknown(d, _NODE_KEYS, f"{w}.")
    name = d.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{w}.name: expected 1-64 characters from A-Z a-z 0-9 _ . -, got {_describe(name)}")
    host = d.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        raise ConfigError(f"{w}.host: expected a host name or IP address, got {_describe(host)}")
    if "port" not in d:
        raise ConfigError(f"{w}.port: missing")
    port = _int(d, "port", f"{w}.", None, 1, 65535)
    role = _choice(d, "role", f"{w}.", "worker", ROLES)
    tasks = d.get("tasks")
    if tasks is not None:
        if (not isinstance(tasks, list) or (not tasks and role != "source")
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tasks)):
            raise ConfigError(f"{w}.tasks: expected a non-empty list of task indices >= 1 "
                              f"(or omit it for all tasks; only a source may hold none), got {_describe(tasks)}")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"{w}.tasks: duplicate task index in {tasks}")
        tasks = tuple(sorted(tasks))
    public_key = d.get("public_key")
    if public_key is not None and (not isinstance(public_key, str) or len(public_key) != 40):
        raise ConfigError(f"{w}.public_key: expected a 40-character Z85 CurveZMQ key (see `mdiexit keys`), "
                          f"got {_describe(public_key)}")
    compress = d.get("compress", "off")
    if isinstance(compress, bool):  # YAML 1.1 reads unquoted on/off as booleans
        compress = "on" if compress else "off"
    compress = _choice({"compress": compress}, "compress", f"{w}.", "off", COMPRESS)
    return NodeConfig(
        name=name, port=port, role=role, host=host, tasks=tasks,
        threads=_int(d, "threads", f"{w}.", 1, 1, 256),
        slowdown=_number(d, "slowdown", f"{w}.", 1.0, lo=1.0),
        bandwidth_mbps=_number(d, "bandwidth_mbps", f"{w}.", None, lo=0.0, lo_open=True, allow_none=True),
        latency_ms=_number(d, "latency_ms", f"{w}.", 0.0, lo=0.0),
        compress=compress,
        wire_codec=_choice(d, "wire_codec", f"{w}.", "raw", WIRE_CODECS),
        rated_gmacs=_number(d, "rated_gmacs", f"{w}.", None, lo=0.0, lo_open=True, allow_none=True),
        public_key=public_key,
    )


def _resolve_package(p: Any, base_dir: Path | None) -> Path:
    if not isinstance(p, str | Path) or not str(p):
        raise ConfigError(f"package: expected a path to a model package folder, got {_describe(p)}")
    path = Path(p).expanduser()
    if path.is_absolute():
        return path
    candidates = [Path.cwd() / path]
    if base_dir is not None:
        base_dir = base_dir.resolve()
        candidates += [base_dir / path, *(parent / path for parent in base_dir.parents)]
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]  # not there (yet): load_package will say so


def _resolve_dir(p: Any, base_dir: Path | None) -> Path | None:
    if p is None:
        return None
    if not isinstance(p, str) or not p:
        raise ConfigError(f"keys_dir: expected a folder path, got {_describe(p)}")
    path = Path(p).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def cluster_from_dict(data: Any, base_dir: Path | None = None, path: Path | None = None) -> ClusterConfig:
    """Validate a parsed cluster file. ``base_dir`` is where relative package paths are also looked up."""
    if not isinstance(data, dict):
        raise ConfigError(f"cluster file: expected a mapping at the top level, got {_describe(data)}")
    _unknown(data, _TOP_KEYS, "")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(f"nodes: expected a non-empty list of nodes, got {_describe(raw_nodes)}")
    nodes = tuple(_node(d, i) for i, d in enumerate(raw_nodes))
    names: dict[str, int] = {}
    addrs: dict[tuple[str, int], int] = {}
    for i, n in enumerate(nodes):
        if n.name in names:
            raise ConfigError(f"nodes[{i}].name: {n.name!r} is already used by nodes[{names[n.name]}]")
        names[n.name] = i
        if (n.host, n.port) in addrs:
            raise ConfigError(f"nodes[{i}].port: {n.host}:{n.port} is already used by "
                              f"nodes[{addrs[n.host, n.port]}]")
        addrs[n.host, n.port] = i
    sources = [i for i, n in enumerate(nodes) if n.role == "source"]
    if len(sources) != 1:
        raise ConfigError(f"nodes: expected exactly one node with role 'source', got {len(sources)}"
                          + (f" (nodes{sources})" if sources else ""))
    raw_nb = data.get("neighbours")
    if raw_nb is None:
        neighbours = {n.name: tuple(m.name for m in nodes if m.name != n.name) for n in nodes}
    else:
        if not isinstance(raw_nb, dict):
            raise ConfigError(f"neighbours: expected a mapping node -> list of nodes, "
                              f"got {_describe(raw_nb)}")
        neighbours = {n.name: () for n in nodes}
        for key, lst in raw_nb.items():
            if key not in names:
                raise ConfigError(f"neighbours.{key}: no node named {key!r}")
            if not isinstance(lst, list):
                raise ConfigError(f"neighbours.{key}: expected a list of node names, got {_describe(lst)}")
            for j, m in enumerate(lst):
                if not isinstance(m, str) or m not in names:
                    raise ConfigError(f"neighbours.{key}[{j}]: no node named {_describe(m)}")
                if m == key:
                    raise ConfigError(f"neighbours.{key}[{j}]: a node is not its own neighbour")
            if len(set(lst)) != len(lst):
                raise ConfigError(f"neighbours.{key}: duplicate names in {lst}")
            neighbours[key] = tuple(lst)
    if "package" not in data:
        raise ConfigError("package: missing (path to the model package folder)")
    return ClusterConfig(
        nodes=nodes,
        package=_resolve_package(data["package"], base_dir),
        mode=_choice(data, "mode", "", "mdi-exit", MODES),
        neighbours=neighbours,
        hysteresis_ms=_number(data, "hysteresis_ms", "", 2.0, lo=0.0),
        hop_limit=_int(data, "hop_limit", "", 4, 0, 64),
        stale_after_ms=_number(data, "stale_after_ms", "", 500.0, lo=0.0, lo_open=True),
        heartbeat_ms=_number(data, "heartbeat_ms", "", 50.0, lo=0.0, lo_open=True, hi=MAX_HEARTBEAT_MS),
        max_batch=_int(data, "max_batch", "", 8, 1, 4096),
        dead_after_ms=_number(data, "dead_after_ms", "", 1000.0, lo=0.0, lo_open=True),
        keys_dir=_resolve_dir(data.get("keys_dir"), base_dir),
        path=path,
    )


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster file (YAML). Raises ConfigError naming the field at fault."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read cluster file ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return cluster_from_dict(data, base_dir=path.parent, path=path)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {path})") from None
