"""Weighted fair queueing of several sources' items on one node (issue: several cameras, one cluster).

Each source's items wait in their own flow. The device serves the non-empty flow that has received the least
compute for its weight so far (normalised service, ``served_s / weight``), as the Virtual Token Counter does
(Sheng et al., OSDI'24) and start-time fair queueing before it. It is work-conserving: a flow alone gets the whole
device. A flow that was idle comes back at the least normalised service of the flows still queued, not below: it
takes its share back at once, but banks no credit for the time it sent nothing.

Policies import no runtime: the items are anything, the costs are the caller's estimates in seconds."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Flows of items, one per source, served by weight. With one flow it is a FIFO queue."""

    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights = dict(weights or {})
        self.flows: dict[str, deque[T]] = {}
        self.served: dict[str, float] = {}  # each flow's compute seconds served, divided by its weight

    def weight(self, flow: str) -> float:
        return self.weights.get(flow, 1.0)

    def append(self, flow: str, item: T) -> None:
        q = self.flows.get(flow)
        if q is None:
            q = self.flows[flow] = deque()
        if not q:  # (re)activated: no credit for the time it was idle
            floor = min((self.served[f] for f, other in self.flows.items() if other and f != flow), default=None)
            if floor is not None:
                self.served[flow] = max(self.served.get(flow, 0.0), floor)
            else:
                self.served.setdefault(flow, 0.0)
        q.append(item)

    def next_flow(self) -> str | None:
        """The flow to serve next: the non-empty one least served for its weight (None: all empty)."""
        best, best_served = None, 0.0
        for flow, q in self.flows.items():
            if q and (best is None or self.served[flow] < best_served):
                best, best_served = flow, self.served[flow]
        return best

    def charge(self, flow: str, seconds: float) -> None:
        """``flow`` was served ``seconds`` of compute."""
        self.served[flow] = self.served.get(flow, 0.0) + seconds / self.weight(flow)

    def __len__(self) -> int:
        return sum(len(q) for q in self.flows.values())

    def __bool__(self) -> bool:
        return any(self.flows.values())

    def __iter__(self) -> Iterator[T]:
        for q in self.flows.values():
            yield from q

    def clear(self) -> None:
        for q in self.flows.values():
            q.clear()


def fair_wait_s(queued_s: Mapping[str, float], weights: Mapping[str, float], flow: str) -> float:
    """The compute seconds a new item of ``flow`` waits behind, under weighted fair queueing: its own flow's queued
    work, and of every other flow as much as is served beside it meanwhile (at most all of it). A flow whose
    queue is empty waits behind almost nothing: its share is free for it to take."""
    own = queued_s.get(flow, 0.0)
    w = weights.get(flow, 1.0)
    return own + sum(min(q, own * weights.get(f, 1.0) / w) for f, q in queued_s.items() if f != flow)
