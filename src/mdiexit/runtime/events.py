"""The cores' vocabulary (DESIGN §4): the work items a node holds, the events its shell feeds a core's ``step``
and the actions the core hands back, for a node (NodeCore, runtime.core) and for the source (SourceCore,
runtime.sourcecore), in the style of h11's events. Plain data: no decisions, sockets, threads or clock.

    node    events  Arrived (an item's DATA), Route (admitted or re-dispatched here), Computed (a batch's outputs),
                    Tick (a heartbeat), Leave (a graceful leave begins)
            actions Compute, Send, Deliver (a RESULT), Expire, Report (a STATE), HandBack (leaving), GiveUp (parked
                    too long)
    source  events  Offered, Release, ControlStep, Supervise, ResultIn, StateIn, PeerDown
            actions Dispatch, Answer, TakeOut, Back, Retire (a package version no item runs any more)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from mdiexit.protocol.codec import describe
from mdiexit.protocol.messages import Data
from mdiexit.runtime.arrivals import Offer


@dataclass
class WorkItem:
    item_id: int
    task: int  # next task to run, 1-based
    x: np.ndarray | None  # that task's input, with a leading batch dimension of 1 (None while still encoded)
    admitted_at: float
    thresholds: tuple[float, ...]
    thresholds_version: int = 0
    hops: int = 0
    timings: list[tuple[str, int, float]] = field(default_factory=list)
    code: dict[str, np.ndarray] | None = None  # the learned code of x, as received (decoded before compute)
    attempt: int = 0  # the source's dispatch number (DESIGN §9): results of other attempts are told apart
    parked_at: float | None = None  # when no available node could take it
    deadline: float | None = None  # in this node's clock; it travels as the budget left (clocks differ)
    source: str = ""  # the source that admitted it: its flow in every queue, where its result goes
    package: str = ""  # the package version its every task runs ("": the node's first, runtime.versions)

    @classmethod
    def from_data(cls, msg: Data, arrays: list[np.ndarray], now: float) -> WorkItem:
        """The item a DATA message carries: its task input `x`, or the learned code of it (decoded later)."""
        coded = [m.name for m in msg.arrays] != ["x"]
        return cls(msg.item_id, msg.task, None if coded else arrays[0], msg.admitted_at, tuple(msg.thresholds),
                   msg.thresholds_version, msg.hops, [tuple(x) for x in msg.timings],
                   code={m.name: a for m, a in zip(msg.arrays, arrays, strict=True)} if coded else None,
                   attempt=msg.attempt, deadline=None if msg.budget_s is None else now + msg.budget_s,
                   source=msg.source or "", package=msg.package or "")

    def to_data(self, sender: str, backlog_s: float, arrays: dict[str, np.ndarray], wire_codec: str,
                now: float) -> Data:
        """The DATA message that carries this item one hop on, with `arrays` (x, or its code) as frames."""
        return Data(item_id=self.item_id, attempt=self.attempt, task=self.task, hops=self.hops + 1,
                    admitted_at=self.admitted_at, thresholds_version=self.thresholds_version,
                    thresholds=list(self.thresholds), sender=sender, backlog_s=backlog_s, timings=self.timings,
                    arrays=[describe(n, a, wire_codec) for n, a in arrays.items()],
                    budget_s=None if self.deadline is None else max(0.0, self.deadline - now),
                    source=self.source or None, package=self.package or None)

    @property
    def nbytes(self) -> int:
        if self.x is not None:
            return int(self.x.nbytes)
        return sum(int(a.nbytes) for a in (self.code or {}).values())


@dataclass
class Finished:
    item: WorkItem
    label: int
    exit: int
    confidence: float


@dataclass
class Send:
    item: WorkItem
    target: str


# ---------------------------------------------------------------- events a shell feeds NodeCore.step
@dataclass
class Arrived:
    """An item came in a DATA message: queued here when this node holds its task, else routed on."""

    item: WorkItem
    queued_bytes: int  # what waits in the node's egress now


@dataclass
class Route:
    """An item this node routes afresh: admitted, or dispatched again, at the source."""

    item: WorkItem
    queued_bytes: int


@dataclass
class Computed:
    """The device computed ``batch`` (``features`` None where the shell carries no arrays: the simulator)."""

    batch: list[WorkItem]
    features: np.ndarray | None
    logits: np.ndarray
    seconds: float  # the device's time for it
    queued_bytes: int


@dataclass
class Tick:
    """A heartbeat: report if due, and route the parked items again."""

    quiet_s: float  # a still node reports this often
    give_up_s: float  # a parked item is given up after this long
    queued_bytes: int
    period_s: float = 0.0  # the heartbeats' period: what is due by quiet_s goes at the heartbeat nearest to it


@dataclass
class Leave:
    """A graceful leave begins: no more compute here; what is held, and what arrives from now on, is handed back."""


# ---------------------------------------------------------------- actions NodeCore.step returns
@dataclass
class Compute:
    batch: list[WorkItem]
    continued: bool  # the device has just finished a batch and this one waited: it starts where that one ended


@dataclass
class Deliver:
    finished: Finished


@dataclass
class Expire:
    item: WorkItem


@dataclass
class Report:
    """A STATE to every peer but ``skip``: those a DATA or RESULT told this node's backlog since the last heartbeat
    and that had a STATE within the quiet period (DESIGN §3.2: every message carries the backlog)."""

    skip: frozenset[str] = frozenset()


@dataclass
class HandBack:
    item: WorkItem


@dataclass
class GiveUp:
    item: WorkItem


Event = Arrived | Route | Computed | Tick | Leave
Action = Compute | Send | Deliver | Expire | Report | HandBack | GiveUp


# -------------------------------------------------------- what happens to the source (events: tuples, matched by class)
class Offered(NamedTuple):
    """An item arrived from the stream or a client."""

    offer: Offer


class Release(NamedTuple):
    """The gate may let items through now (its tokens refilled, something settled, a backlog shrank)."""

    own_backlog_s: float


class ControlStep(NamedTuple):
    """One admission-control step (every CONTROL_PERIOD_S while admitting), with supervision."""

    start: float  # when admission started
    own_backlog_s: float


class Supervise(NamedTuple):
    """Supervision alone (while draining, or before admission starts)."""

    own_backlog_s: float


class ResultIn(NamedTuple):
    """A result for an admitted item: a node's RESULT (the shell checked it is in flight and from a node holding its
    exit), or an item the source finished or dropped itself."""

    item_id: int
    label: int
    exit: int
    confidence: float
    node: str
    attempt: int = 0
    expired: bool = False
    backlog_s: float | None = None  # the backlog the node's RESULT carried (None: the source's own result)


class StateIn(NamedTuple):
    """A node's STATE: its backlog, whether it is leaving, and (about once a second) the package versions it holds
    and why the last one shipped to it did not load."""

    sender: str
    backlog_s: float
    leaving: bool = False
    packages: tuple[str, ...] = ()
    package_error: str | None = None


class PeerDown(NamedTuple):
    """A node's process died (the launcher saw it exit)."""

    name: str
    kind: str


SourceEvent = Offered | Release | ControlStep | Supervise | ResultIn | StateIn | PeerDown


# ---------------------------------------------------------------- what the source's shell must do (actions)
@dataclass(frozen=True)
class Dispatch:
    """Route this item into the cluster (an admission, or a retry of one in flight)."""

    item: WorkItem


@dataclass(frozen=True)
class Answer:
    """Answer an offer that will never be admitted with its one outcome: rejected at the gate, or expired while it
    waited there (DESIGN §10)."""

    key: object  # the offer's key, as its arrivals know it
    outcome: str  # rejected | expired
    reason: str


@dataclass(frozen=True)
class TakeOut:
    """Route nothing more to this node: it is down (``in_flight`` items were dispatched again)."""

    name: str
    kind: str
    in_flight: int


@dataclass(frozen=True)
class Back:
    """A node that was down reports again: routing may use it."""

    name: str


@dataclass(frozen=True)
class Retire:
    """A roll-out ended and no item in flight runs on ``package`` any more: every node may unload it."""

    package: str


SourceAction = Dispatch | Answer | TakeOut | Back | Retire
