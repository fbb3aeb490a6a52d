"""Message types of the wire protocol (DESIGN §6).

Each message travels as a ZeroMQ multipart message: frame 0 is a msgpack map holding ``kind`` (one byte,
as msgpack bin), ``version`` and the fields below; DATA's array buffers follow as frames 1.., described
by its ``arrays`` list. Field constraints (non-negative counts, finite times, thresholds in [0, 1],
bounded lengths) are declared on the types, so decoding validates them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

PROTOCOL_VERSION = 1

KIND_DATA = b"D"
KIND_RESULT = b"R"
KIND_STATE = b"S"
KIND_CONTROL = b"C"
KIND_JOIN = b"J"
KIND_WELCOME = b"W"
KIND_PART = b"P"  # source -> joiner: one part of the model package, after WELCOME
KIND_MEMBER = b"M"
KIND_HELLO = b"H"  # client -> source: what do you serve?
KIND_INFO = b"I"  # source -> client: the served package's input, classes and version
KIND_REQUEST = b"Q"  # client -> source: classify one input
KIND_REPLY = b"A"  # source -> client: the request's one outcome
KIND_ROLLOUT = b"O"  # operator -> source: roll a new package version out (its PARTs follow)
KIND_SHIP = b"V"  # source (or a peer relaying) -> node: a package version to hold beside the current one
KIND_PROGRESS = b"G"  # source -> operator: where the roll-out stands

# why a well-formed message was refused: no cluster key, a sender other than the key's node (or CONTROL not from
# the source), a RESULT for no item in flight or from a node that does not hold its exit's task
REJECT_REASONS = ("unauthenticated", "impersonation", "unexpected_result")

MAX_NAME = 64  # node and array names
MAX_TASKS = 64  # thresholds, service-time entries
MAX_TIMINGS = 256  # per-hop timing entries
MAX_NDIM = 8
MAX_PEERS = 256  # per-link entries of a STATE

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
PackageVersion = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]  # NAME@HASH (package.Package.version)
Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
TaskIndex = Annotated[int, msgspec.Meta(ge=1, le=MAX_TASKS)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]  # durations: finite, non-negative
Time = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]  # clock readings: finite
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Dim = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Codec = Literal["raw", "lz4", "zstd"]
Timing = tuple[Name, TaskIndex, Seconds]  # (node, task, seconds)
# what a STATE tells its addressee about their link (policies/linkestimate.py): (bytes received from the addressee
# in all, seconds from the last of them to this STATE leaving, the addressee's last STATE sent_at echoed, seconds
# held here)
LinkAck = tuple[Count, Seconds, Time, Seconds]
Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1e13)]  # bit/s
LinkFigures = tuple[Rate, Seconds, Count]  # a link's estimated bit/s (0: unknown), latency in s, bytes sent on it


class ArrayMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Description of one array frame: its name (e.g. "x", or an encoder output), dtype, shape and codec."""

    name: Name
    dtype: Annotated[str, msgspec.Meta(max_length=16)]
    shape: Annotated[list[Dim], msgspec.Meta(max_length=MAX_NDIM)]
    codec: Codec = "raw"


class Data(msgspec.Struct, frozen=True, kw_only=True):
    """DATA: one item on its way to its next task. ``thresholds`` are those the item was admitted with."""

    KIND: ClassVar[bytes] = KIND_DATA

    item_id: Count
    attempt: Count = 0  # the source's dispatch number of this item: a re-dispatch increments it (DESIGN §9)
    task: TaskIndex  # next task to run, 1-based
    hops: Count = 0
    admitted_at: Time
    thresholds_version: Count = 0
    thresholds: Annotated[list[Unit], msgspec.Meta(max_length=MAX_TASKS)]
    sender: Name
    backlog_s: Seconds = 0.0
    arrays: Annotated[list[ArrayMeta], msgspec.Meta(max_length=MAX_TASKS)] = []
    timings: Annotated[list[Timing], msgspec.Meta(max_length=MAX_TIMINGS)] = []
    budget_s: Seconds | None = None  # seconds left before the item's deadline when sent (None: no deadline)
    source: Name | None = None  # the source that admitted it, where its RESULT goes (None: the cluster's first)
    package: PackageVersion | None = None  # the package version its every task runs (None: the node's first)
    version: int = PROTOCOL_VERSION


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """RESULT: the final answer for one item, sent to the source that admitted it."""

    KIND: ClassVar[bytes] = KIND_RESULT

    item_id: Count
    attempt: Count = 0
    label: Count
    exit: TaskIndex  # 1-based
    confidence: Unit
    sender: Name
    backlog_s: Seconds = 0.0
    admitted_at: Time
    timings: Annotated[list[Timing], msgspec.Meta(max_length=MAX_TIMINGS)] = []
    expired: bool = False  # the item's deadline passed in a queue here: dropped unrun (label and exit meaningless)
    version: int = PROTOCOL_VERSION


class State(msgspec.Struct, frozen=True, kw_only=True):
    """STATE: a node's heartbeat to its neighbours (backlog, queue length, service-time estimates), and what it
    measured of the link from its addressee (``ack``)."""

    KIND: ClassVar[bytes] = KIND_STATE

    sender: Name
    backlog_s: Seconds
    queue_len: Count
    service_s: Annotated[dict[TaskIndex, Seconds], msgspec.Meta(max_length=MAX_TASKS)] = {}
    sent_at: Time  # when it leaves the sender's send queue, on the sender's clock
    leaving: bool = False  # a graceful leave: route nothing more here
    # counters for the run summary (tasks_run_K, busy_s, bytes_sent, bad_messages, ...)
    stats: Annotated[dict[Name, Time], msgspec.Meta(max_length=MAX_TASKS)] = {}
    ack: LinkAck | None = None  # for this addressee only
    run_s: Seconds | None = None  # the source's seconds since the run started (emulated link schedules count from it)
    links: Annotated[dict[Name, LinkFigures], msgspec.Meta(max_length=MAX_PEERS)] = {}  # the final STATE: per peer
    # about once a second, for the site's status: busy_s and tasks so far, and the package version the node runs
    progress: Annotated[dict[Name, Seconds], msgspec.Meta(max_length=MAX_TASKS)] = {}
    package: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    # several sources: each one's backlog here under fair queueing, what its admission steers by
    source_backlogs: Annotated[dict[Name, Seconds], msgspec.Meta(max_length=MAX_PEERS)] = {}
    # with the progress: every package version the node holds loaded, and why the last one shipped failed to load
    packages: Annotated[list[PackageVersion], msgspec.Meta(max_length=8)] = []
    package_error: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    version: int = PROTOCOL_VERSION


class Control(msgspec.Struct, frozen=True, kw_only=True):
    """CONTROL, accepted only from the source: shutdown, or unload ``package`` (a version no item runs any more).
    (Thresholds travel with each item, not here.)"""

    KIND: ClassVar[bytes] = KIND_CONTROL

    sender: Name
    action: Literal["shutdown", "unload"]
    package: PackageVersion | None = None
    version: int = PROTOCOL_VERSION


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """MEMBER, from the source to every node: a device joined the cluster; add it as a neighbour (DESIGN §9)."""

    KIND: ClassVar[bytes] = KIND_MEMBER

    sender: Name
    name: Name
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    tasks: Annotated[list[TaskIndex], msgspec.Meta(min_length=1, max_length=MAX_TASKS)] | None = None
    threads: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    slowdown: Annotated[float, msgspec.Meta(ge=1.0, le=1e6)] = 1.0
    bandwidth_mbps: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] | None = None
    latency_ms: Annotated[float, msgspec.Meta(ge=0.0, le=1e6)] = 0.0
    public_key: Annotated[str, msgspec.Meta(min_length=40, max_length=40)] | None = None
    version: int = PROTOCOL_VERSION


class Join(Member, frozen=True, kw_only=True):
    """JOIN, from a new device to the source: who it is and where it listens (its key is what the ZAP handler
    authenticated; ``sender`` must be ``name``)."""

    KIND: ClassVar[bytes] = KIND_JOIN


Sha256 = Annotated[str, msgspec.Meta(min_length=64, max_length=64)]
ArchiveBytes = Annotated[int, msgspec.Meta(ge=1, le=1 << 30)]  # a package archive's size
PartCount = Annotated[int, msgspec.Meta(ge=1, le=1 << 20)]  # the PARTs it travels in


class Welcome(msgspec.Struct, frozen=True, kw_only=True):
    """WELCOME, from the source to a joiner: the cluster view (a cluster file), and the model package's size, SHA-256
    and number of PARTs, which follow, paced so that they never crowd out the data (DESIGN §9)."""

    KIND: ClassVar[bytes] = KIND_WELCOME

    sender: Name
    cluster_yaml: Annotated[str, msgspec.Meta(max_length=1 << 20)]
    package_sha256: Sha256
    package_bytes: ArchiveBytes
    parts: PartCount
    version: int = PROTOCOL_VERSION


class Part(msgspec.Struct, frozen=True, kw_only=True):
    """PART: bytes ``offset``.. of the package archive named by its SHA-256, in the array frame (after a WELCOME,
    a SHIP or a ROLLOUT)."""

    KIND: ClassVar[bytes] = KIND_PART

    sender: Name
    package_sha256: Sha256
    index: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
    offset: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)]
    arrays: Annotated[list[ArrayMeta], msgspec.Meta(min_length=1, max_length=1)]
    version: int = PROTOCOL_VERSION


# ---------------------------------------------------------------- roll-outs (docs/guide/rollout.md)
class Ship(msgspec.Struct, frozen=True, kw_only=True):
    """SHIP, to a node: hold package ``package`` beside the current one. Its archive follows in PARTs named by its
    SHA-256; once the node holds it, it passes it on to each of ``relay_to`` (peers it reaches faster than the
    source does)."""

    KIND: ClassVar[bytes] = KIND_SHIP

    sender: Name
    package: PackageVersion
    package_sha256: Sha256
    package_bytes: ArchiveBytes
    parts: PartCount
    relay_to: Annotated[list[Name], msgspec.Meta(max_length=MAX_PEERS)] = []
    version: int = PROTOCOL_VERSION


Fraction = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    """ROLLOUT, from an operator (the source's key, or one in KEYS_DIR/operators/) to the source: serve the package
    whose archive follows in PARTs, on a growing share of the items (``steps``, each held ``step_s`` while the
    gates hold); PROGRESS goes back to ``reply_host``:``reply_port`` (a CurveZMQ server with the operator's key)."""

    KIND: ClassVar[bytes] = KIND_ROLLOUT

    sender: Name
    package_sha256: Sha256
    package_bytes: ArchiveBytes
    parts: PartCount
    steps: Annotated[list[Fraction], msgspec.Meta(min_length=1, max_length=32)]
    step_s: Annotated[float, msgspec.Meta(gt=0.0, le=86400.0)]
    shadow: Unit = 0.05
    min_agreement: Unit = 0.95
    max_exit_shift: Unit = 0.25
    max_p95_ms: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] | None = None
    reply_host: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    reply_port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    version: int = PROTOCOL_VERSION


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """PROGRESS, from the source to the operator of a roll-out: its phase (receiving, shipping, step, completed,
    rolled_back, refused), the share of items on the new version, the gates' figures, and a line for a person."""

    KIND: ClassVar[bytes] = KIND_PROGRESS

    sender: Name
    phase: Literal["receiving", "shipping", "step", "completed", "rolled_back", "refused"]
    package: Annotated[str, msgspec.Meta(max_length=256)] = ""
    fraction: Unit = 0.0
    agreement: Unit | None = None
    compared: Count = 0
    items_on_new: Count = 0
    text: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    version: int = PROTOCOL_VERSION


# ---------------------------------------------------------------- the client endpoint (DESIGN §10)
# A request's one outcome: its result, or rejected / expired / failed (with a reason), or error (bad request)
OUTCOMES = ("result", "rejected", "expired", "failed", "error")
ClientId = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    """HELLO, from a client: asks what the service serves (answered with INFO)."""

    KIND: ClassVar[bytes] = KIND_HELLO

    version: int = PROTOCOL_VERSION


class Info(msgspec.Struct, frozen=True, kw_only=True):
    """INFO, to a client: the input a request must carry (uint8, shape (1, C, H, W)), the class names, and the
    served package's version (a request naming another version is refused)."""

    KIND: ClassVar[bytes] = KIND_INFO

    input_shape: Annotated[list[Dim], msgspec.Meta(max_length=MAX_NDIM)]
    classes: Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=100_000)]
    package: Annotated[str, msgspec.Meta(max_length=256)]
    max_deadline_ms: float = 0.0  # 0: requests without a deadline are accepted too
    version: int = PROTOCOL_VERSION


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """REQUEST, from a client: classify one input (array frame "x": uint8 (1, C, H, W) as INFO says).
    ``request_id`` is the client's own number, echoed in the REPLY."""

    KIND: ClassVar[bytes] = KIND_REQUEST

    request_id: ClientId
    deadline_ms: Annotated[float, msgspec.Meta(gt=0.0, le=1e9)] | None = None
    package: Annotated[str, msgspec.Meta(max_length=256)] | None = None  # None: whatever is served
    arrays: Annotated[list[ArrayMeta], msgspec.Meta(min_length=1, max_length=1)]
    # the client's clock (Unix time) as it sent this: the service tells how long a request waited unread from how
    # much its one-way delay exceeds the least it has seen from that client (no synchronised clocks needed)
    sent_at: Time | None = None
    version: int = PROTOCOL_VERSION


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """REPLY, to a client: one request's outcome (OUTCOMES). ``reason`` says why for every outcome but result."""

    KIND: ClassVar[bytes] = KIND_REPLY

    request_id: ClientId
    outcome: Literal["result", "rejected", "expired", "failed", "error"]
    reason: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    label: int = -1
    name: Annotated[str, msgspec.Meta(max_length=256)] = ""
    exit: Annotated[int, msgspec.Meta(ge=0, le=MAX_TASKS)] = 0
    confidence: Unit = 0.0
    latency_ms: Seconds = 0.0  # from admission at the source to the result there
    package: Annotated[str, msgspec.Meta(max_length=256)] = ""  # the package version that answered (NAME@HASH)
    version: int = PROTOCOL_VERSION


Message = (Data | Result | State | Control | Member | Join | Welcome | Part | Hello | Info | Request | Reply | Ship
           | Rollout | Progress)

BY_KIND: dict[bytes, type] = {
    KIND_DATA: Data, KIND_RESULT: Result, KIND_STATE: State, KIND_CONTROL: Control, KIND_MEMBER: Member,
    KIND_JOIN: Join, KIND_WELCOME: Welcome, KIND_PART: Part, KIND_HELLO: Hello, KIND_INFO: Info,
    KIND_REQUEST: Request, KIND_REPLY: Reply, KIND_SHIP: Ship, KIND_ROLLOUT: Rollout, KIND_PROGRESS: Progress,
}
KIND_NAMES = {KIND_DATA: "DATA", KIND_RESULT: "RESULT", KIND_STATE: "STATE", KIND_CONTROL: "CONTROL",
              KIND_MEMBER: "MEMBER", KIND_JOIN: "JOIN", KIND_WELCOME: "WELCOME", KIND_PART: "PART",
              KIND_HELLO: "HELLO", KIND_INFO: "INFO", KIND_REQUEST: "REQUEST", KIND_REPLY: "REPLY",
              KIND_SHIP: "SHIP", KIND_ROLLOUT: "ROLLOUT", KIND_PROGRESS: "PROGRESS"}
# what may reach a node's cluster inbox; the client endpoint takes only HELLO and REQUEST
CLUSTER_KINDS = (Data, Result, State, Control, Member, Join, Welcome, Part, Ship, Rollout)
CLIENT_KINDS = (Hello, Request)
