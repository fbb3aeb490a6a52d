"""The cluster file (DESIGN §4): nodes, neighbour graph, model package, mode and policy parameters.

    cfg = load_cluster("examples/edge4.yaml")   # raises ConfigError naming the field, e.g.
    # ConfigError: nodes[2].slowdown: expected a number >= 1, got 'fast'

YAML layout (flat; unknown keys are rejected so that typos do not pass silently)::

    package: models/mobilenetv2-fmnist
    mode: mdi-exit                  # a mode of mdiexit.policies.modes.MODES
    hysteresis_ms: 2                # and hop_limit, stale_after_ms, heartbeat_ms, max_batch
    nodes:
      - {name: src, role: source, port: 5550, slowdown: 8, bandwidth_mbps: 50, latency_ms: 2}
      - {name: w1, role: worker, port: 5551, tasks: [2, 3], slowdown: 4}
      - {name: w2, role: worker, port: 5552, bandwidth_schedule: [[0, 20], [20, 1], [50, 20]]}
    links: measured                 # or configured: the offloading rule uses the figures above as they are
    neighbours:                     # optional; default: full mesh. n -> whom n may send DATA to
      src: [w1]

A node's ``bandwidth_mbps``/``latency_ms`` describe its access link: everything it sends shares that egress
bandwidth, and the path n->m pays both ends' latencies (:meth:`ClusterConfig.link`). RESULTs go to the source directly,
whatever the neighbour graph says. With ``links: measured`` (the default) these figures only seed each node's online
estimates (mdiexit.policies.linkestimate), so they may be left out. ``bandwidth_schedule`` is emulation only: the
egress's true rate over time, ``[t_s, mbps]`` from the run's start (it overrides ``bandwidth_mbps`` from its first
entry on), which the offloading rule is never told.

The fields are declared once, below, as typed dataclass fields with their constraints (msgspec ``Meta``); msgspec
checks a parsed file against them, and :mod:`mdiexit.configcheck` turns its errors into messages naming the field.
To add a field, add it to :class:`NodeConfig` or :class:`ClusterConfig` with its type, constraint and default.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml
from msgspec import Meta

from mdiexit.configcheck import ConfigError, convert, describe_value, one_of, reject_unknown
from mdiexit.emulation.boards import cpu_slowdown_of
from mdiexit.emulation.device import EMULATIONS
from mdiexit.energy import power_model
from mdiexit.policies.modes import MODES
from mdiexit.policies.offload import OffloadConfig
from mdiexit.protocol.codec import CODECS

ROLES = ("source", "worker")
STREAM_FORMS = "test, all, a count N, folder:PATH or video:PATH (a file, rtsp://... or /dev/videoN)"
VIDEO_PREFIX = "video:"  # a stream that plays a video (mdiexit.video)
FOLDER_PREFIX = "folder:"  # a stream of an image folder's files
SOURCE_ONLY = ("client_port", "sink", "weight", "target_accuracy", "deadline_ms", "stream", "fps")  # a source's fields
COMPRESS = ("off", "on", "auto")
LINK_FIGURES = ("measured", "configured")  # links: online estimates (seeded by the file) | the file's figures
OBJECTIVES = ("throughput", "energy")  # the offloading rule: the soonest finish | the fewest joules within a slack
BASE_RATED_GMACS = 4.0  # assumed speed of an un-slowed node, for initial service-time estimates
MAX_HEARTBEAT_MS = 100.0  # DESIGN §3.2: a STATE at least every 100 ms
_OFFLOAD = OffloadConfig()  # the offloading policy's defaults, in the file's units (ms)

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="1-64 characters from A-Z a-z 0-9 _ . -")]
Host = Annotated[str, Meta(pattern=r"^\S+$", description="a host name or IP address")]
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]

__all__ = ["BASE_RATED_GMACS", "COMPRESS", "LINK_FIGURES", "ClusterConfig", "ConfigError", "MAX_HEARTBEAT_MS",
           "NodeConfig", "ROLES", "cluster_dict", "cluster_from_dict", "link_between", "load_cluster", "write_cluster"]


@dataclass(frozen=True)
class NodeConfig:
    """One node (process): where it listens, what it holds, and how its device and link are emulated."""

    name: Name  # unique in the file; names the node in logs, results and the summary
    port: Annotated[int, Meta(ge=1, le=65535)]  # where the node listens for the other nodes
    # a source admits its own stream and collects its items' results; a site may have several (cameras). The first
    # source listed also runs the cluster: membership, joins, shutdown, the client endpoint
    role: one_of(ROLES) = "worker"
    host: Host = "127.0.0.1"  # the address the other nodes reach this node at
    tasks: tuple[Annotated[int, Meta(ge=1)], ...] | None = None  # 1-based task indices; None = all tasks
    threads: Annotated[int, Meta(ge=1, le=256)] = 1  # ONNX Runtime threads of this node's engine
    slowdown: Annotated[float, Meta(ge=1)] = 1.0  # emulation: the device runs every task this many times slower
    # emulation: the device's CPU runs the runtime's own work (messages, threads, ledger) this many times slower
    # than this host, and its device pays for it: a number, or a board (raspberry-pi-3, raspberry-pi-4,
    # raspberry-pi-5, jetson-nano, jetson-orin-nano; emulation/boards.py), read as its factor; None: free
    cpu_slowdown: Annotated[float, Meta(ge=1)] | str | None = None
    bandwidth_mbps: Positive | None = None  # this node's egress in Mbit/s; None = unlimited
    latency_ms: NonNegative = 0.0  # this node's access-link latency; a path pays both ends'
    # emulated egress rate over time: (seconds from the run's start, Mbit/s), times increasing
    bandwidth_schedule: Annotated[tuple[tuple[NonNegative, Positive], ...],
                                  Meta(min_length=1, description="a non-empty list of [t_s, mbps] pairs")] | None = None
    compress: one_of(COMPRESS) = "off"  # learned feature codes on this node's egress
    wire_codec: one_of(CODECS) = "raw"  # lossless compression of array frames on this node's egress
    rated_gmacs: Positive | None = None  # speed for the first service-time estimates; None: BASE_RATED_GMACS / slowdown
    # CurveZMQ public key (Z85, from `mdiexit keys`); None: read from KEYS_DIR/NAME.key
    public_key: Annotated[str, Meta(min_length=40, max_length=40, description="a 40-character Z85 key")] | None = None
    client_port: Annotated[int, Meta(ge=1, le=65535)] | None = None  # the source: where clients connect (serve)
    metrics_port: Annotated[int, Meta(ge=1, le=65535)] | None = None  # Prometheus metrics over HTTP, on loopback
    # the source: where every outcome also goes, jsonl:PATH or mqtt://[USER@]HOST[:PORT]/TOPIC (--sink overrides it)
    sink: str | None = None
    # a source: its share of contended compute (weighted fair queueing on every node) and of --rate
    weight: Positive = 1.0
    # a source: its accuracy floor under rate adaptation (else --target-accuracy)
    target_accuracy: Annotated[float, Meta(gt=0, le=1)] | None = None
    deadline_ms: Positive | None = None  # a source: its items' deadline (else --deadline-ms)
    # a source: what it admits, test | all | N | folder:PATH | video:PATH (a file, rtsp://..., /dev/videoN)
    stream: Annotated[str, Meta(min_length=1)] | None = None
    # a source: its video's frame rate (else the file's; --fps); of any other stream, the items a second it offers
    fps: Positive | None = None
    # energy: a preset (raspberry-pi-4, raspberry-pi-5, jetson-nano, jetson-orin-nano) or {idle_w, busy_w, j_per_mb}
    power: str | dict[str, float] | None = None

    def __post_init__(self) -> None:
        power_model(self.power)  # a preset that does not exist, or figures that cannot be, name the fix now
        object.__setattr__(self, "cpu_slowdown", cpu_slowdown_of(self.cpu_slowdown))  # a board, as its factor
        for key in SOURCE_ONLY:
            if self.role != "source" and getattr(self, key) != NodeConfig.__dataclass_fields__[key].default:
                raise ValueError(f"{key}: only a source has one; move it to a node with role source")
        if self.stream is not None:
            stream_items(self.stream, None)  # a form it does not name says so now
        times = [t for t, _ in self.bandwidth_schedule or ()]
        for i in range(1, len(times)):
            if times[i] <= times[i - 1]:
                raise ValueError(f"bandwidth_schedule: times must increase, but entry {i} ({times[i]:g} s) does not "
                                 f"come after entry {i - 1} ({times[i - 1]:g} s)")
        if self.tasks is None:
            return
        if not self.tasks and self.role != "source":
            raise ValueError("tasks: expected a non-empty list of task indices >= 1 (or omit it for all tasks; "
                             "only a source may hold none), got []")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: duplicate task index in {list(self.tasks)}")
        object.__setattr__(self, "tasks", tuple(sorted(self.tasks)))

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


def stream_items(stream: str, data_dir: Path | None) -> tuple[str | int, Path | None]:
    """A source's ``stream`` as (items, data_dir), as ``--items`` and ``--data-dir`` would give them."""
    where = stream.partition(":")[2]
    if stream in ("test", "all") or (stream.startswith(VIDEO_PREFIX) and where):
        return stream, data_dir
    if stream.startswith(FOLDER_PREFIX) and where:
        return "all", Path(where).expanduser()
    if stream.isdigit() and int(stream) > 0:
        return int(stream), data_dir
    raise ValueError(f"stream: expected {STREAM_FORMS}, got {stream!r}")


def link_between(a: NodeConfig, b: NodeConfig) -> tuple[float | None, float]:
    """(bandwidth in bit/s or None for unlimited, latency in s) of the path a -> b (see ClusterConfig.link)."""
    bw = a.bandwidth_mbps * 1e6 if a.bandwidth_mbps is not None else None
    return bw, (a.latency_ms + b.latency_ms) / 1000.0


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster file, validated."""

    nodes: Annotated[tuple[NodeConfig, ...], Meta(min_length=1, description="a non-empty list of nodes")]  # the devices
    # the model package every node runs; a relative path is looked up from the current folder, then from the
    # cluster file's folder and its parents
    package: Annotated[Path, Meta(description="a path to a model package folder")]
    mode: one_of(MODES) = "mdi-exit"  # how work is spread and where items may exit (DESIGN §4)
    # n -> whom n may send DATA to; the full mesh when the file has none
    neighbours: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hysteresis_ms: NonNegative = _OFFLOAD.hysteresis_s * 1000  # offload only when a neighbour finishes this much sooner
    hop_limit: Annotated[int, Meta(ge=0, le=64)] = _OFFLOAD.hop_limit  # an item is handed on at most this many times
    # where an item's task runs: the soonest finish, or the fewest joules within energy_slack_ms of it (by the
    # nodes' `power:` models; a node without one makes its neighbours fall back to the soonest finish)
    objective: one_of(OBJECTIVES) = "throughput"
    energy_slack_ms: NonNegative = 20.0  # objective energy: how much later than the soonest an item may finish
    stale_after_ms: Positive = _OFFLOAD.stale_after_s * 1000  # a neighbour's report older than this is not trusted
    # each node's STATE report period (a STATE waits while its state moved less than the hysteresis)
    heartbeat_ms: Annotated[float, Meta(gt=0, le=MAX_HEARTBEAT_MS)] = 50.0
    max_batch: Annotated[int, Meta(ge=1, le=4096)] = 8  # dynamic batching: up to this many queued items per call
    # device time: slowdown x profiled time, x each call's time, or none (the model's calls return at once, exits
    # drawn to its mix: the runtime alone, `bench overhead`)
    emulation: one_of(EMULATIONS) = "calibrated"
    links: one_of(LINK_FIGURES) = "measured"  # price transfers by online estimates (seeded by the file) or the file
    dead_after_ms: Positive = 1000.0  # no report for this long: the node is down, its items re-dispatched (§9)
    keys_dir: Path | None = None  # node keys (`mdiexit keys`): NAME.key_secret for itself, NAME.key for peers
    path: Path | None = None  # the file it was loaded from (not a key of the file)

    @property
    def source(self) -> NodeConfig:
        """The first source: it also runs the cluster (membership, joins, shutdown, the client endpoint)."""
        return next(n for n in self.nodes if n.role == "source")

    @property
    def sources(self) -> tuple[NodeConfig, ...]:
        return tuple(n for n in self.nodes if n.role == "source")

    @property
    def weights(self) -> dict[str, float]:
        """Each source's weight: its share of contended capacity (policies.fairqueue)."""
        return {n.name: n.weight for n in self.sources}

    @property
    def workers(self) -> tuple[NodeConfig, ...]:
        return tuple(n for n in self.nodes if n.role == "worker")

    @functools.cached_property
    def _by_name(self) -> dict[str, NodeConfig]:  # planning and simulating a 1000-node cluster look nodes up a lot
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> NodeConfig:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no node named {name!r}") from None

    def neighbours_of(self, name: str) -> tuple[str, ...]:
        return self.neighbours.get(name, ())

    def with_member(self, node: NodeConfig) -> ClusterConfig:
        """The cluster after `node` joined: every node becomes its neighbour, both ways (DESIGN §9)."""
        others = [n.name for n in self.nodes if n.name != node.name]
        neighbours = {n: tuple(dict.fromkeys((*nb, node.name))) for n, nb in self.neighbours.items() if n != node.name}
        neighbours[node.name] = tuple(others)
        nodes = tuple(n for n in self.nodes if n.name != node.name) + (node,)
        return dataclasses.replace(self, nodes=nodes, neighbours=neighbours)

    def senders_to(self, name: str) -> tuple[str, ...]:
        """The nodes that may send ``name`` DATA: it reports its state to them too (DESIGN §9)."""
        return tuple(n for n, nb in self.neighbours.items() if name in nb)

    def public_keys(self) -> dict[str, str | None]:
        return {n.name: n.public_key for n in self.nodes}

    def keyless(self, keys_dir: Path | None = None) -> bool:
        """No keys configured: no keys folder (``keys_dir``, else the file's) and no public key in the file. A
        one-machine run then makes ephemeral keys (runtime.launch.cluster_keys)."""
        return (keys_dir or self.keys_dir) is None and not any(n.public_key for n in self.nodes)

    def link(self, src: str, dst: str) -> tuple[float | None, float]:
        """Configured (bandwidth in bit/s or None for unlimited, latency in s) of the path src -> dst: the sender's
        egress bandwidth (shared by all its sends, as on a device's one uplink) and both ends' latencies."""
        return link_between(self.node(src), self.node(dst))

    @property
    def quiet_report_s(self) -> float:
        """A node whose state has not moved since its last STATE reports at least this often instead of at every
        heartbeat: within DESIGN §3.2's 100 ms, and well within its peers' staleness and the source's failure
        detection."""
        return min(MAX_HEARTBEAT_MS, 2 * self.heartbeat_ms, self.stale_after_ms / 2, self.dead_after_ms / 4) / 1000

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
        """Every task must be reachable from every source along the neighbour graph, for a mode whose sources
        compute (or not) and whose workers pass items on (or not, as in DDI). The error names the task."""
        for src in self.sources:
            self._check_reachable_from(src.name, num_tasks, source_computes, offload_later)

    def _check_reachable_from(self, src: str, num_tasks: int, source_computes: bool, offload_later: bool) -> None:

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


_FILE_KEYS = [f.name for f in dataclasses.fields(ClusterConfig) if f.name != "path"]
_NODE_KEYS = [f.name for f in dataclasses.fields(NodeConfig)]


def _resolve_dir(path: Path | None, base_dir: Path | None) -> Path | None:
    """A folder named in the file: relative to the file's folder."""
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def cluster_from_dict(data: Any, base_dir: Path | None = None, path: Path | None = None) -> ClusterConfig:
    """Validate a parsed cluster file. ``base_dir`` is where relative package paths are also looked up."""
    if not isinstance(data, dict):
        raise ConfigError(f"cluster file: expected a mapping at the top level, got {describe_value(data)}")
    reject_unknown(data, _FILE_KEYS, "")
    raw_nodes = data.get("nodes")
    if isinstance(raw_nodes, list):
        data = {**data, "nodes": [_yaml_node(d, i) for i, d in enumerate(raw_nodes)]}
    raw_neighbours = data.get("neighbours")
    cfg = convert({k: v for k, v in data.items() if k != "neighbours"}, ClusterConfig)
    _check_unique(cfg.nodes)
    return dataclasses.replace(cfg, package=_resolve_package(cfg.package, base_dir),
                               neighbours=_neighbours(raw_neighbours, cfg.nodes), path=path,
                               keys_dir=_resolve_dir(cfg.keys_dir, base_dir))


def _yaml_node(d: Any, i: int) -> Any:
    """A node mapping with its keys checked, and YAML 1.1's booleans for unquoted on/off read as they were meant."""
    if not isinstance(d, dict):
        return d  # the conversion names the field
    reject_unknown(d, _NODE_KEYS, f"nodes[{i}].")
    if isinstance(d.get("compress"), bool):
        d = {**d, "compress": "on" if d["compress"] else "off"}
    return d


def _check_unique(nodes: tuple[NodeConfig, ...]) -> None:
    names: dict[str, int] = {}
    addrs: dict[tuple[str, int], int] = {}
    for i, n in enumerate(nodes):
        if n.name in names:
            raise ConfigError(f"nodes[{i}].name: {n.name!r} is already used by nodes[{names[n.name]}]")
        names[n.name] = i
        for field_name in ("port", "client_port", "metrics_port"):
            port = getattr(n, field_name)
            if port is None:
                continue
            if (n.host, port) in addrs:
                raise ConfigError(f"nodes[{i}].{field_name}: {n.host}:{port} is already used by "
                                  f"nodes[{addrs[n.host, port]}]")
            addrs[n.host, port] = i
    if not any(n.role == "source" for n in nodes):
        raise ConfigError("nodes: expected at least one node with role 'source' (it holds the data and collects "
                          "the results), got none")


def _neighbours(raw: Mapping | None, nodes: tuple[NodeConfig, ...]) -> dict[str, tuple[str, ...]]:
    """The neighbour graph, checked against the node names; the full mesh when the file has none."""
    names = [n.name for n in nodes]
    if raw is None:
        return {n: tuple(m for m in names if m != n) for n in names}
    graph = {n: () for n in names}
    for key, lst in convert(raw, dict, "neighbours", "a mapping node -> list of nodes").items():
        if key not in graph:
            raise ConfigError(f"neighbours.{key}: no node named {key!r}")
        lst = convert(lst, tuple[str, ...], f"neighbours.{key}", "a list of node names")
        for j, m in enumerate(lst):
            if m not in graph:
                raise ConfigError(f"neighbours.{key}[{j}]: no node named {describe_value(m)}")
            if m == key:
                raise ConfigError(f"neighbours.{key}[{j}]: a node is not its own neighbour")
        if len(set(lst)) != len(lst):
            raise ConfigError(f"neighbours.{key}: duplicate names in {list(lst)}")
        graph[key] = lst
    return graph


def _resolve_package(path: Path, base_dir: Path | None) -> Path:
    path = path.expanduser()
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


def cluster_dict(cfg: ClusterConfig) -> dict:
    """The cluster as a cluster-file mapping (every field spelled out, the package path absolute)."""
    d = msgspec.to_builtins(cfg, enc_hook=str)
    del d["path"]
    d["package"] = str(Path(cfg.package).resolve())
    return d


def write_cluster(out: Path, cluster: str | Path | ClusterConfig | Mapping | None = None, *,
                  nodes: list[dict] | None = None, every_node: Mapping | Callable[[dict], Mapping] | None = None,
                  **changes: Any) -> Path:
    """Write a cluster file at ``out`` and return ``out``: ``cluster`` (a cluster file, a loaded config or a mapping;
    None: start from nothing) with ``changes`` to its top-level fields, its nodes replaced by ``nodes`` when given,
    and ``every_node`` (a mapping, or a function of the node's mapping returning one) applied to every node. The
    package path is made absolute (relative to the file's folder when both lie under the working directory, so that
    a file written into a repository names no machine's folders), and the result is validated before it is written
    (ConfigError names the field).

        write_cluster(tmp / "slow.yaml", "examples/edge4.yaml", every_node={"bandwidth_mbps": 5})
        write_cluster(tmp / "c.yaml", package=pkg, nodes=local_nodes([{"slowdown": 2}, {}]))
    """
    if isinstance(cluster, str | Path):
        cluster = load_cluster(cluster)
    data = cluster_dict(cluster) if isinstance(cluster, ClusterConfig) else dict(cluster or {})
    data.update(changes)
    if nodes is not None:
        data["nodes"] = nodes
    data["nodes"] = [dict(n) for n in data.get("nodes") or []]
    for n in data["nodes"] if every_node is not None else ():
        n.update(every_node(n) if callable(every_node) else every_node)
    out = Path(out)
    if isinstance(data.get("package"), str | Path):
        data["package"] = str(Path(data["package"]).expanduser().resolve())
        here, at = Path.cwd().resolve(), out.resolve().parent
        if at.is_relative_to(here) and Path(data["package"]).is_relative_to(here):  # e.g. a bench's published copy
            data["package"] = os.path.relpath(data["package"], at)  # found from the file's folder, whatever the cwd
    cluster_from_dict(data, base_dir=out.resolve().parent)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out
