"""A node's role: what it does with what only the source handles. A worker's (WorkerRole) sends its results to the
source and refuses a JOIN or a RESULT sent to it; the source's is runtime.source.SourceProcess, which composes a
node shell with a SourceCore. The node calls its role on its loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from mdiexit.protocol.codec import encode
from mdiexit.protocol.messages import Join, Result, State
from mdiexit.runtime import events

if TYPE_CHECKING:
    from mdiexit.runtime.node import NodeProcess


class Role(Protocol):
    """What a node does with what only the source handles."""

    def heard(self, sender: str, t: float) -> None: ...
    def on_join(self, msg: Join) -> None: ...
    def on_result(self, msg: Result) -> None: ...
    def on_state(self, msg: State) -> None: ...
    def deliver(self, f: events.Finished) -> None: ...
    def deliver_expired(self, item: events.WorkItem) -> None: ...
    def run_elapsed_s(self, t: float) -> float | None: ...


class WorkerRole:
    """A worker's: its results go to the source; a JOIN or a RESULT sent to it is refused; it keeps no time of
    the run."""

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

    def run_elapsed_s(self, t: float) -> float | None:
        return None

    def deliver(self, f: events.Finished) -> None:
        it, node, t = f.item, self.node, self.node.clock.now()
        msg = Result(item_id=it.item_id, attempt=it.attempt, label=f.label, exit=f.exit,
                     confidence=min(1.0, f.confidence), sender=node.name, backlog_s=node.core.backlog_s(t),
                     admitted_at=it.admitted_at, timings=it.timings)
        node.links[node.source_name].send(encode(msg), t)

    def deliver_expired(self, item: events.WorkItem) -> None:
        """Tell the source an item was dropped unrun: its deadline passed here."""
        node, t = self.node, self.node.clock.now()
        msg = Result(item_id=item.item_id, attempt=item.attempt, label=0, exit=item.task, confidence=0.0,
                     sender=node.name, backlog_s=node.core.backlog_s(t), admitted_at=item.admitted_at, expired=True)
        node.links[node.source_name].send(encode(msg), t)
