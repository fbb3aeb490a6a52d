"""A node's role: what it does with what only a source handles. A worker's (WorkerRole) refuses a JOIN, a
ROLLOUT or a RESULT sent to it; a source's is runtime.source.SourceProcess, which composes a node shell with a
SourceCore. The node calls its role on its loop, and for the items its role admitted: any other finished item's
RESULT goes to the source that admitted it (NodeProcess.send_result)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from mdiexit.protocol.messages import Join, Part, Result, Rollout, State
from mdiexit.runtime import events

if TYPE_CHECKING:
    from mdiexit.runtime.node import NodeProcess


class Role(Protocol):
    """What a node does with what only the source handles."""

    def heard(self, sender: str, t: float) -> None: ...
    def on_join(self, msg: Join) -> None: ...
    def on_result(self, msg: Result) -> None: ...
    def on_state(self, msg: State) -> None: ...
    def on_rollout(self, msg: Rollout) -> None: ...
    def on_part(self, msg: Part, payload: bytes) -> None: ...  # a PART of no shipment to this node
    def deliver(self, f: events.Finished) -> None: ...  # an item this role admitted finished here
    def deliver_expired(self, item: events.WorkItem) -> None: ...
    def run_elapsed_s(self, t: float) -> float | None: ...


class WorkerRole:
    """A worker's: a JOIN or a RESULT sent to it is refused; it keeps no time of the run."""

    def __init__(self, node: NodeProcess):
        self.node = node

    def heard(self, sender: str, t: float) -> None:
        pass

    def on_join(self, msg: Join) -> None:
        self.node.reject("impersonation", f"JOIN from {msg.sender!r} sent to a worker")

    def on_result(self, msg: Result) -> None:
        self.node.reject("unexpected_result", f"RESULT for item {msg.item_id} sent to a worker")

    def on_state(self, msg: State) -> None:
        pass

    def on_rollout(self, msg: Rollout) -> None:
        self.node.reject("impersonation", f"ROLLOUT from {msg.sender!r} sent to a worker (send it to the source)")

    def on_part(self, msg: Part, payload: bytes) -> None:
        pass  # a late part of a version this node holds already, or gave up on

    def run_elapsed_s(self, t: float) -> float | None:
        return None

    def deliver(self, f: events.Finished) -> None:  # a worker admits nothing: any item is some source's
        self.node.send_result(f)

    def deliver_expired(self, item: events.WorkItem) -> None:
        self.node.send_expired(item)
