"""Where the source's offered items come from: a dataset stream (`mdiexit run`) or live clients
(`mdiexit serve`, runtime.service). Either way, every offer is answered with its one outcome (DESIGN §10)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mdiexit.data import Dataset
from mdiexit.runtime.ledger import Record


@dataclass
class Offer:
    x: np.ndarray  # the package's input: uint8, (1, C, H, W)
    truth: int  # the true label, -1 when unknown
    key: Any  # what the arrivals need to answer it
    deadline_s: float | None = None  # relative to when it is offered


class Arrivals(Protocol):
    done: bool  # no more offers will come

    def take(self, t: float) -> list[Offer]: ...  # the offers that arrived by t
    def next_at(self, t: float) -> float: ...  # when the next offer is due (t + a poll period if unknown)
    def answer(self, key: Any, outcome: str, reason: str, record: Record | None) -> None: ...
    def stop_taking(self) -> list[Offer]: ...  # no more offers; returns those that arrived but were not taken
    def shed(self, overloaded: bool) -> None: ...  # the gate refuses new offers now: refuse them at the door


class StreamArrivals:
    """A dataset offered at ``rate()`` items per second from ``start``: cycled (the test split) or each item
    once, in order. Its answers are the ledger's and the gate's counts; nobody waits on them."""

    def __init__(self, stream: Dataset, rate: Callable[[], float], start: float, cycle: bool = True,
                 deadline_s: float | None = None):
        self.stream, self.rate, self.cycle, self.deadline_s = stream, rate, cycle, deadline_s
        self.next_t, self.i, self.done = start, 0, False

    @property
    def labelled(self) -> bool:
        """Whether its items carry true labels (an image folder without class sub-folders does not)."""
        return self.stream.labelled

    def take(self, t: float) -> list[Offer]:
        out = []
        images, labels = self.stream.images, self.stream.labels
        gap_s = 1.0 / max(self.rate(), 1e-3)  # the admission rate of this tick
        while not self.done and self.next_t <= t:
            if self.i >= len(labels) and not self.cycle:
                self.done = True  # every item offered once
                break
            k = self.i % len(labels)
            out.append(Offer(images[k:k + 1], int(labels[k]), k, self.deadline_s))
            self.i += 1
            self.next_t += gap_s
            if self.next_t < t - 1.0:
                self.next_t = t  # do not burst to catch up after a stall
        return out

    def next_at(self, t: float) -> float:
        return self.next_t

    def answer(self, key: Any, outcome: str, reason: str, record: Record | None) -> None:
        pass

    def stop_taking(self) -> list[Offer]:
        self.done = True
        return []

    def shed(self, overloaded: bool) -> None:
        pass  # a stream offers at the admission rate: the gate answers it
