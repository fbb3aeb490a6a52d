"""RolloutCore: the decisions of one roll-out of a new package version (docs/guide/rollout.md), with no clock,
socket or thread: the source's loop owns it through its SourceCore, and every method takes ``now``.

    shipping  every live node receives the new version and loads it beside the current one (no item runs on it yet)
    step i    a share ``steps[i]`` of the admitted items runs on the new version, for ``step_s``, while the gates
              hold; a sample (``shadow``) of the others also runs on the other version, unanswered, so that the two
              versions' labels can be compared (no true labels needed)
    completed the last step held: every item from now on runs on the new version
    rolled_back a gate failed: every item from now on runs on the old version, with the reason

Each item runs on one version from admission to result (the version travels in its DATA): its tasks, exit
thresholds and feature codes are never mixed. The shell unloads the version no item uses any more once its items in
flight are done (``retired``)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

SHADOW_BASE = 1 << 61  # shadow copies' item ids start here: never an admitted item's
MIN_COMPARED = 20  # a gate judges once it has this many samples (comparisons, results on the new version)
SHIP_TIMEOUT_S = 600.0  # the nodes must hold the new version within this long, or the roll-out is rolled back


@dataclass(frozen=True)
class RolloutPlan:
    """What the operator asked for (protocol.messages.Rollout), and the two versions."""

    new: str
    old: str
    steps: tuple[float, ...] = (0.05, 0.25, 1.0)
    step_s: float = 20.0
    shadow: float = 0.05
    min_agreement: float = 0.95
    max_exit_shift: float = 0.25  # total variation between the two versions' exit mixes
    max_p95_s: float | None = None


@dataclass
class StepFigures:
    """What the gates judge, over the current step: the exits of the compared pairs on either version, and the
    latencies of the items on the new one."""

    exits_new: Counter = field(default_factory=Counter)
    exits_old: Counter = field(default_factory=Counter)
    latencies_new: list[float] = field(default_factory=list)


@dataclass
class Pair:
    """An item and its shadow copy on the other version: each one's (label, exit), once it answered."""

    copy_version: str
    own: tuple[int, int] | None = None
    copy: tuple[int, int] | None = None


class RolloutCore:
    def __init__(self, plan: RolloutPlan, package: str, now: float):
        self.plan, self.package = plan, package  # package: the path or name the operator gave, for the record
        self.phase = "shipping"
        self.started_at = now
        self.ended_at: float | None = None
        self.step = -1
        self.step_started = now
        self.reason = ""
        self.holders: dict[str, bool] = {}  # node -> holds the new version loaded
        self.relapsed: set[str] = set()  # nodes that held it and no longer do (restarted), for the shell to ship to
        self.acc_new = 0.0  # Bresenham accumulators: an exact share without randomness
        self.acc_shadow = 0.0
        self.twins: dict[int, int] = {}  # shadow copy id -> its item's id
        self.pairs: dict[int, Pair] = {}  # item id -> its answer and its shadow copy's, as they come
        self.next_twin = SHADOW_BASE
        self.compared = 0
        self.agreed = 0
        self.items_on_new = 0  # admitted on the new version (in its steps and after it completed)
        self.figures = StepFigures()
        self.news: list[str] = []  # lines for the operator, taken by the shell

    # ---------------------------------------------------------------- what runs where
    @property
    def fraction(self) -> float:
        if self.phase == "step":
            return self.plan.steps[self.step]
        return 1.0 if self.phase == "completed" else 0.0

    @property
    def current(self) -> str:
        """The version an item admitted now runs on, when not the rollout's split's to say (outside the steps)."""
        return self.plan.new if self.phase == "completed" else self.plan.old

    @property
    def retired(self) -> str | None:
        """The version no new item will use: the old one after completion, the new one after a rollback."""
        return self.plan.old if self.phase == "completed" else self.plan.new if self.phase == "rolled_back" else None

    def version_for(self) -> tuple[str, str | None]:
        """The version of the next admitted item, and the version of its shadow copy (None: no copy)."""
        if self.phase != "step":
            self.items_on_new += self.phase == "completed"
            return self.current, None
        self.acc_new += self.fraction
        version = self.plan.old
        if self.acc_new >= 1.0 - 1e-9:  # (a tenth added ten times is 0.999...)
            self.acc_new -= 1.0
            version = self.plan.new
            self.items_on_new += 1
        twin = None
        if self.plan.shadow > 0:
            self.acc_shadow += self.plan.shadow
            if self.acc_shadow >= 1.0 - 1e-9:
                self.acc_shadow -= 1.0
                twin = self.plan.old if version == self.plan.new else self.plan.new
        return version, twin

    def twin_id(self, item_id: int, version: str) -> int:
        """An id for the shadow copy of ``item_id``, which runs on ``version``."""
        tid, self.next_twin = self.next_twin, self.next_twin + 1
        self.twins[tid] = item_id
        self.pairs[item_id] = Pair(version)
        return tid

    def expects(self, item_id: int) -> bool:
        return item_id in self.twins

    # ---------------------------------------------------------------- what comes back
    def on_result(self, item_id: int, version: str, exit_: int, latency_s: float, label: int | None) -> None:
        """An admitted item's outcome (label None: it expired or failed)."""
        if self.phase == "step" and label is not None and version == self.plan.new:
            self.figures.latencies_new.append(latency_s)
        if item_id in self.pairs:
            self._compare(item_id, None if label is None else (label, exit_), copy=False)

    def on_twin(self, twin_id: int, label: int | None, exit_: int = 0) -> None:
        """A shadow copy's result (label None: it expired)."""
        item_id = self.twins.pop(twin_id, None)
        if item_id is not None and item_id in self.pairs:
            self._compare(item_id, None if label is None else (label, exit_), copy=True)

    def _compare(self, item_id: int, answer: tuple[int, int] | None, copy: bool) -> None:
        """One side of a pair answered (label, exit): once both have, the versions are compared on the same input:
        their labels, and their exits (an exit mix compared on the same items has no sampling noise between them)."""
        pair = self.pairs[item_id]
        if answer is None:  # no answer to compare: forget the pair
            del self.pairs[item_id]
            return
        if copy:
            pair.copy = answer
        else:
            pair.own = answer
        if pair.own is None or pair.copy is None:
            return
        del self.pairs[item_id]
        if self.phase == "step":
            self.compared += 1
            self.agreed += pair.own[0] == pair.copy[0]
            new, old = (pair.own, pair.copy) if pair.copy_version == self.plan.old else (pair.copy, pair.own)
            self.figures.exits_new[new[1]] += 1
            self.figures.exits_old[old[1]] += 1

    def on_packages(self, node: str, versions: list[str], error: str | None, now: float) -> None:
        """A node's STATE: the versions it holds, and why the last one shipped did not load."""
        had = self.holders.get(node, False)
        self.holders[node] = self.plan.new in versions
        if had and not self.holders[node]:
            self.relapsed.add(node)  # it restarted with what its cluster file names: it needs the version again
        if error and self.phase in ("shipping", "step") and not self.holders[node]:
            self.rollback(f"node {node} could not load it ({error})", now)

    def on_failed(self, version: str, why: str, now: float) -> None:
        if version == self.plan.new and self.phase == "step":
            self.rollback(f"an item on the new version failed ({why})", now)

    # ---------------------------------------------------------------- the steps and gates
    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def tick(self, now: float, live_nodes: list[str]) -> None:
        """One control step: shipping done, a gate failed, a step held."""
        if self.phase == "shipping":
            missing = [n for n in live_nodes if not self.holders.get(n)]
            if not missing:
                self._next_step(now)
            elif now - self.started_at > SHIP_TIMEOUT_S:
                self.rollback(f"{', '.join(missing)} did not receive it within {SHIP_TIMEOUT_S:g} s", now)
            return
        if self.phase != "step":
            return
        if (why := self.gate_failed()) is not None:
            self.rollback(why, now)
        elif now - self.step_started >= self.plan.step_s and self._judged():
            self._next_step(now)

    def _judged(self) -> bool:
        """Enough samples were seen to pass the gates (a step with no shadow copies needs none)."""
        return self.plan.shadow == 0 or self.compared >= MIN_COMPARED

    def gate_failed(self) -> str | None:
        p, f = self.plan, self.figures
        if self.compared >= MIN_COMPARED and self.agreement < p.min_agreement:
            return (f"agreement {self.agreement:.3f} with the old version's labels over {self.compared} items is below "
                    f"--min-agreement {p.min_agreement:g}")
        if sum(f.exits_new.values()) >= MIN_COMPARED:
            shift = exit_shift(f.exits_new, f.exits_old)
            if shift > p.max_exit_shift:
                return f"its exit mix moved by {shift:.2f} (total variation, on the same items) from the old " \
                       f"version's, over --max-exit-shift {p.max_exit_shift:g}"
        if p.max_p95_s is not None and len(f.latencies_new) >= MIN_COMPARED:
            p95 = float(np.percentile(f.latencies_new, 95))
            if p95 > p.max_p95_s:
                return f"its p95 latency {1000 * p95:.0f} ms exceeds --max-p95-ms {1000 * p.max_p95_s:g}"
        return None

    def _next_step(self, now: float) -> None:
        if self.step + 1 >= len(self.plan.steps):
            self.phase, self.ended_at = "completed", now
            self.news.append(f"completed: {self.plan.new} serves every item")
            return
        self.phase, self.step, self.step_started = "step", self.step + 1, now
        self.figures = StepFigures()
        self.news.append(f"step {self.step + 1}/{len(self.plan.steps)}: {100 * self.fraction:g} % of items on "
                         f"{self.plan.new}")

    def rollback(self, why: str, now: float) -> None:
        if self.phase in ("completed", "rolled_back"):
            return
        self.phase, self.reason, self.ended_at = "rolled_back", why, now
        self.pairs.clear()
        self.news.append(f"rolled back: {why}")

    @property
    def done(self) -> bool:
        return self.phase in ("completed", "rolled_back")

    def line(self) -> str:
        """Where it stands, for the site's status."""
        agreement = "" if self.agreement is None else f", agreement {self.agreement:.3f} over {self.compared}"
        where = {"shipping": "shipping to the nodes",
                 "step": f"step {self.step + 1}/{len(self.plan.steps)}, {100 * self.fraction:g} % of items",
                 "completed": "completed", "rolled_back": f"rolled back: {self.reason}"}[self.phase]
        return f"{self.plan.new} ({where}; items on it: {self.items_on_new}{agreement})"

    def record(self, run_start: float) -> dict:
        """The summary's entry (``rollouts``)."""
        return {"package": self.package, "version": self.plan.new, "from_version": self.plan.old,
                "outcome": self.phase if self.done else "in_progress", "reason": self.reason,
                "started_at_s": self.started_at - run_start,
                "ended_at_s": None if self.ended_at is None else self.ended_at - run_start,
                "agreement": self.agreement, "compared": self.compared, "items_on_new": self.items_on_new,
                "steps": list(self.plan.steps), "step_s": self.plan.step_s}


def exit_shift(a: Counter, b: Counter) -> float:
    """Total variation distance between two exit mixes (0: the same, 1: disjoint)."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return math.nan
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def shipping_plan(own_mbps: float | None, due_mbps: dict[str, float | None]) -> dict[str, list[str]]:
    """Who the source ships a version to, and whom each passes it on to: every node in ``due_mbps`` (its uplink's
    Mbit/s, None: unlimited) directly, or, where that is sooner, only the node with the fastest uplink, which relays
    it to the others (the archive then crosses the source's uplink once, and the relay's once per other node)."""
    if not due_mbps:
        return {}
    mbps = {n: v or math.inf for n, v in due_mbps.items()}
    own = own_mbps or math.inf
    relay = max(mbps, key=lambda n: mbps[n])
    direct_s, relayed_s = len(mbps) / own, 1 / own + (len(mbps) - 1) / mbps[relay]
    if len(mbps) > 1 and relayed_s < direct_s:
        return {relay: [n for n in mbps if n != relay]}
    return {n: [] for n in mbps}
