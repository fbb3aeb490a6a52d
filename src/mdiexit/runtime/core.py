"""NodeCore: the pure step of one node (queue, backlog, exit and offload decisions, what it holds, whom it may
send to, how many bytes an item costs on each link, when a parked item is given up). No sockets, no threads, no
locks, no clock: every method takes `now`. The same core runs behind ZeroMQ (runtime.node, whose loop thread is the
only one that calls it, runtime.loop) and in virtual time (mdiexit.sim).

Its shells drive it through one door, ``NodeCore.step(event, now) -> actions``, in the style of h11 (the events
and actions are in runtime.events):

    events   Arrived (an item's DATA), Route (an item admitted or re-dispatched here), Computed (a batch's outputs),
             Tick (a heartbeat), Leave (a graceful leave begins)
    actions  Compute (hand the device this batch: one task, one package version), Send (an item to a neighbour),
             Deliver (a finished item's RESULT), Expire (dropped unrun: its deadline passed), Report (send a STATE),
             HandBack (return an item to the source: this node is leaving), GiveUp (parked too long: the source's
             ledger re-dispatches it)

After every event the core hands an idle device its next batch, so the order of a node's work (the device's next
batch before the last one's exits, a leaving node's work handed back) is decided here once, for both shells."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np

from mdiexit.config import ClusterConfig, NodeConfig, link_between
from mdiexit.energy import power_model
from mdiexit.package import Package
from mdiexit.policies.exit import exit_decision
from mdiexit.policies.fairqueue import FairQueue, fair_wait_s
from mdiexit.policies.modes import ModeRules
from mdiexit.policies.offload import EnergyWeights, NeighbourView, OffloadConfig, ServiceEstimator, choose_target
from mdiexit.runtime.events import (
    Action,
    Arrived,
    Compute,
    Computed,
    Deliver,
    Event,
    Expire,
    Finished,
    GiveUp,
    HandBack,
    Leave,
    Report,
    Route,
    Send,
    Tick,
    WorkItem,
)
from mdiexit.runtime.reporting import Reporting, due_after


def held_tasks(node: NodeConfig, rules: ModeRules, num_tasks: int) -> frozenset[int]:
    """The tasks ``node`` runs in this mode (a DDI source runs none)."""
    if node.role == "source" and not rules.source_computes:
        return frozenset()
    return node.held_tasks(num_tasks)


def peers_of(cluster: ClusterConfig, name: str, rules: ModeRules) -> list[str]:
    """Everyone ``name`` sends to: its neighbours (DATA), the nodes that send it DATA (so that reports flow both
    ways along each edge, DESIGN §9) and every source (its items' results); a source reaches every node."""
    if rules.single_node:
        return []
    is_source = cluster.node(name).role == "source"
    peers = [*cluster.neighbours_of(name), *cluster.senders_to(name)]
    peers += [n.name for n in cluster.nodes] if is_source else [s.name for s in cluster.sources]
    return list(dict.fromkeys(p for p in peers if p != name))


def neighbour_view(me: NodeConfig, peer: NodeConfig, rules: ModeRules, num_tasks: int) -> NeighbourView:
    """What ``me`` may send ``peer``, and over which link."""
    held = held_tasks(peer, rules, num_tasks)
    if me.role != "source" and not rules.offload_later:
        held = frozenset()  # DDI: workers never pass items on
    bw, lat = link_between(me, peer)
    power = power_model(peer.power)
    return NeighbourView(peer.name, held, bandwidth_bps=bw, latency_s=lat,
                         extra_w=None if power is None else power.busy_w - power.idle_w)


def energy_weights(cluster: ClusterConfig, me: NodeConfig) -> EnergyWeights | None:
    """The energy objective's weights at ``me``: None under `objective: throughput`, or when ``me`` has no power
    model (its choices fall back to the soonest finish)."""
    power = power_model(me.power)
    if cluster.objective != "energy" or power is None:
        return None
    return EnergyWeights(power.busy_w - power.idle_w, power.j_per_mb / 1e6, cluster.energy_slack_ms / 1000)


def codes_pay(raw_bytes: int, code_bytes: int, bandwidth_bps: float | None, encode_s: float, decode_s: float) -> bool:
    """`compress: auto`: a learned code pays on a link when encoding, sending the code and decoding beat sending
    the float features (times on the sending and receiving devices, slowdown included)."""
    if bandwidth_bps is None:
        return False
    return code_bytes * 8 / bandwidth_bps + encode_s + decode_s < raw_bytes * 8 / bandwidth_bps


class NodeCore:
    """One node's decisions. Not thread-safe: one thread owns it (runtime.loop)."""

    def __init__(self, name: str, pkg: Package, held: frozenset[int], rules: ModeRules, cfg: OffloadConfig,
                 estimator: ServiceEstimator, neighbours: dict[str, NeighbourView], is_source: bool = False,
                 compress_on: dict[str, set[int]] | None = None, energy: EnergyWeights | None = None,
                 max_batch: int = 1, weights: Mapping[str, float] | None = None):
        self.name, self.pkg, self.held, self.rules, self.cfg = name, pkg, held, rules, cfg
        self.energy = energy  # the energy objective's weights, None: the soonest finish
        self.estimator = estimator
        self.neighbours = neighbours
        self.is_source = is_source
        self.compress_on: dict[str, set[int]] = compress_on or {}  # peer -> boundaries whose features go as codes
        # bytes on the wire of a task's input: raw (task 1's uint8 input, later float32 features), and as a code
        self.raw_bytes = {1: int(np.prod(pkg.input_shape))} | {t.index + 1: t.feature_bytes for t in pkg.tasks[:-1]}
        self.code_bytes = {c.after_task: c.code_bytes for c in pkg.compression}
        # the package versions held here (runtime.versions): an item runs on the one it names ("": the first)
        self.first = pkg.version
        self.pkgs: dict[str, Package] = {pkg.version: pkg}
        self.peer_packages: dict[str, frozenset[str]] = {}  # what each neighbour last said it holds
        self.lacking: dict[str, frozenset[str]] = {}  # version -> the neighbours that do not hold it
        self.dropped_parked = 0  # parked items given up (nobody reachable held their task)
        # one flow per source, served by its weight (policies.fairqueue); with one source, a FIFO queue
        self.queue: FairQueue[WorkItem] = FairQueue(weights)
        self.queued_by: dict[str, Counter[int]] = {}  # queued items per source, per task
        self.parked: list[WorkItem] = []  # items no available node can take yet
        self.queued: Counter[int] = Counter()  # queued items per task
        self.busy_until = 0.0
        self.tasks_run: dict[int, int] = {}
        self.expired: list[WorkItem] = []  # dropped unrun: their deadline passed in the queue
        self.reporting = Reporting(cfg.hysteresis_s)  # when a heartbeat sends a STATE, and to whom
        self.max_batch = max_batch
        self.computing = False  # the device holds a batch (from Compute until its Computed)
        self.leaving = False

    # ---------------------------------------------------------------- the one door
    def step(self, event: Event, now: float) -> list[Action]:
        """Take one event; return what the shell must do, in order."""
        actions: list[Action] = []
        if isinstance(event, Arrived | Route):
            if self.leaving:
                actions.append(HandBack(event.item))
            elif (s := (self.on_data if isinstance(event, Arrived) else self.route)(
                    event.item, now, event.queued_bytes)) is not None:
                actions.append(s)
        elif isinstance(event, Computed):
            self.end_batch(now)
            self.computing = False
            self._feed(now, actions, continued=True)  # the device's next batch first: it computes meanwhile
            finished, onward = self.finish_batch(event.batch, event.features, event.logits, event.seconds, now)
            actions += [Deliver(f) for f in finished]
            for item in onward:
                if self.leaving:
                    actions.append(HandBack(item))
                elif (s := self.route(item, now, event.queued_bytes)) is not None:
                    actions.append(s)
        elif isinstance(event, Tick):
            if self.leaving:  # a leaving node tells every peer at every heartbeat
                actions.append(Report())
            else:
                quiet_s = due_after(event.quiet_s, event.period_s)
                skip = self.reporting.on_heartbeat(now, quiet_s, self.backlog_s(now), len(self.parked),
                                                   self.estimator.snapshot(), len(self.queue.weights) >= 2)
                if skip is not None:
                    actions.append(Report(skip))
                sends, dropped = self.retry_parked(now, event.give_up_s, event.queued_bytes)
                actions += [GiveUp(item) for item in dropped]
                actions += sends
        elif isinstance(event, Leave):
            self.leaving = True
            actions += [HandBack(item) for item in self.take_all()]
        self._feed(now, actions)
        self._note_told(actions, now)
        return actions

    def _note_told(self, actions: list[Action], now: float) -> None:
        """Peers that the actions' DATA and RESULT messages will tell this node's backlog."""
        for a in actions:
            if isinstance(a, Send):
                self.reporting.told(a.target, now)
            elif isinstance(a, Deliver | Expire):
                source = (a.finished.item if isinstance(a, Deliver) else a.item).source
                if source and source != self.name:
                    self.reporting.told(source, now)

    def _feed(self, now: float, actions: list[Action], continued: bool = False) -> None:
        """An idle device (not leaving) takes its next batch; items past their deadline are dropped on the way."""
        if self.computing or self.leaving or not self.queue:
            return
        batch = self.take_batch(self.max_batch, now)
        actions += [Expire(item) for item in self.take_expired()]
        if batch:
            self.computing = True
            actions.append(Compute(batch, continued))

    # ---------------------------------------------------------------- state
    def backlog_s(self, now: float) -> float:
        """W_n: estimated seconds of queued compute plus what remains of the running batch."""
        # priced at the current estimates: a running sum would keep the error of every estimate that changed
        # while its item waited
        queued_s, est = 0.0, self.estimator.get
        for task, n in list(self.queued.items()):
            if n:
                queued_s += n * est(task)
        return queued_s + max(0.0, self.busy_until - now)

    def source_backlogs_s(self, now: float) -> dict[str, float] | None:
        """Each source's backlog here under fair queueing: what a new item of that source would wait for (its
        admission's signal). None in a cluster of one source: its backlog is the node's."""
        if len(self.queue.weights) < 2:
            return None
        est = self.estimator.get
        queued_s = {src: sum(n * est(task) for task, n in c.items() if n) for src, c in self.queued_by.items()}
        running_s = max(0.0, self.busy_until - now)
        return {src: running_s + fair_wait_s(queued_s, self.queue.weights, src) for src in self.queue.weights}

    def backlog_of(self, source: str, now: float) -> float:
        """The backlog ``source``'s admission sees here: its own under fair queueing, or the whole."""
        per_source = self.source_backlogs_s(now)
        return self.backlog_s(now) if per_source is None else per_source.get(source, self.backlog_s(now))

    def on_report(self, sender: str, backlog_s: float, now: float, service_s: dict[int, float] | None,
                  source_backlogs: dict[str, float] | None = None) -> None:
        view = self.neighbours.get(sender)
        if view is not None:
            view.on_report(backlog_s, now, service_s, source_backlogs)

    def on_leave(self, sender: str) -> None:
        """``sender`` leaves the cluster: it is unavailable at once (until it reports again)."""
        view = self.neighbours.get(sender)
        if view is not None:
            view.reported_at = -math.inf

    # ---------------------------------------------------------------- routing
    def payload_bytes(self, item: WorkItem) -> dict[str, int]:
        """The item's bytes on the link to each neighbour: its next task's input, as the learned code where that
        link compresses this boundary (or where it arrived as a code and goes on as it came)."""
        boundary = item.task - 1
        code = self.code_bytes.get(boundary)
        raw = self.raw_bytes[item.task]
        if code is None:
            return dict.fromkeys(self.neighbours, raw)
        if item.code is not None:
            return dict.fromkeys(self.neighbours, code)
        return {peer: code if boundary in self.compress_on.get(peer, ()) else raw for peer in self.neighbours}

    def on_data(self, item: WorkItem, now: float, queued_bytes: int) -> Send | None:
        """An item arrived: queued here when this node holds its next task, else routed on (or parked)."""
        if item.task in self.held and self.holds_version(item):
            self.accept(item)
            return None
        return self.route(item, now, queued_bytes)

    def holds_version(self, item: WorkItem) -> bool:
        return (item.package or self.first) in self.pkgs

    # ---------------------------------------------------------------- package versions (runtime.versions)
    def add_version(self, pkg: Package) -> None:
        self.pkgs[pkg.version] = pkg

    def remove_version(self, version: str) -> None:
        """Unload ``version`` (the source retired it: no item runs on it any more). The last one stays."""
        if version in self.pkgs and len(self.pkgs) > 1:
            del self.pkgs[version]
            if version == self.first:
                self.first = next(iter(self.pkgs))

    def on_packages(self, sender: str, versions: list[str]) -> None:
        """A neighbour's STATE said which versions it holds: items of another version are not sent there."""
        if sender not in self.neighbours or self.peer_packages.get(sender) == frozenset(versions):
            return
        self.peer_packages[sender] = frozenset(versions)
        known = set(self.pkgs).union(*self.peer_packages.values())
        self.lacking = {v: lack for v in known
                        if (lack := frozenset(p for p, held in self.peer_packages.items() if v not in held))}

    def route(self, item: WorkItem, now: float, queued_bytes: int) -> Send | None:
        """Decide where `item` runs its next task. Returns Send, or None after queueing it here (or parking it).
        ``queued_bytes``: what already waits in this node's egress (one queue, shared by every link)."""
        decision = self._decide(item, now, self.payload_bytes(item), queued_bytes)
        if decision is None:
            self._enqueue(item)
            return None
        if decision == "":
            if item.parked_at is None:
                item.parked_at = now
            self.parked.append(item)
            return None
        self.neighbours[decision].on_sent(item.task)
        return Send(item, decision)

    def _decide(self, item: WorkItem, now: float, nbytes: dict[str, int], queued_bytes: int) -> str | None:
        holds = item.task in self.held and self.holds_version(item)
        first_hop = self.is_source and item.task == 1 and item.hops == 0
        if holds and first_hop and self.rules.source_runs_first:
            return None
        if holds and not first_hop and not self.rules.offload_later:
            return None  # DDI: whoever received the item runs all its tasks
        for view in self.neighbours.values():
            view.queued_bytes = queued_bytes
        own = self.estimator.get(item.task) if holds else None
        shared = len(self.queue.weights) > 1  # several sources: each item sees its source's fair-share backlogs
        views = self.neighbours.values()
        if self.lacking and (lack := self.lacking.get(item.package or self.first)):
            views = [v for v in views if v.name not in lack]  # a roll-out: only holders of its version
        d = choose_target(item.task, nbytes, self.backlog_of(item.source, now), own, views,
                          item.hops, now, self.cfg, self.energy, item.source if shared else None)
        if d.local:
            return None
        if d.no_holder:
            return ""
        return d.target

    def _enqueue(self, item: WorkItem) -> None:
        self.queue.append(item.source, item)
        self.queued[item.task] += 1
        by_task = self.queued_by.get(item.source)
        if by_task is None:
            by_task = self.queued_by[item.source] = Counter()
        by_task[item.task] += 1

    def _dequeued(self, item: WorkItem, n: int = 1) -> None:
        self.queued[item.task] -= n
        self.queued_by[item.source][item.task] -= n

    def accept(self, item: WorkItem) -> None:
        """An item arrived for a task this node must run (it was sent here)."""
        self._enqueue(item)

    def take_expired(self) -> list[WorkItem]:
        items, self.expired = self.expired, []
        return items

    def retry_parked(self, now: float, give_up_s: float, queued_bytes: int) -> tuple[list[Send], list[WorkItem]]:
        """Route the parked items again (a holder may have reported since). Returns (sends, items given up: parked
        longer than ``give_up_s``; the source's ledger re-dispatches them or fails them)."""
        items, self.parked = self.parked, []
        sends, dropped = [], []
        for item in items:
            if item.parked_at is not None and now - item.parked_at > give_up_s:
                self.dropped_parked += 1
                dropped.append(item)
            elif (s := self.route(item, now, queued_bytes)) is not None:
                sends.append(s)
        return sends, dropped

    def take_all(self) -> list[WorkItem]:
        """Everything queued or parked here (a graceful leave hands it back)."""
        items = list(self.queue) + self.parked
        self.queue.clear()
        self.parked = []
        self.queued.clear()
        self.queued_by.clear()
        return items

    # ---------------------------------------------------------------- compute
    def take_batch(self, max_batch: int, now: float) -> list[WorkItem]:
        """Pop up to `max_batch` queued items of the source served next (policies.fairqueue) that need the same
        task as its head ([] when none; never waits), looking past items that need other tasks (they keep their
        order): a queue where tasks alternate still fills its batches. Items past their deadline are dropped on the
        way (``take_expired``): no compute is spent on them.

        Batching never delays an item: it takes only what is already queued."""
        batch: list[WorkItem] = []
        while not batch:  # a flow whose every item expired yields none: the next flow's turn
            flow = self.queue.next_flow()
            if flow is None:
                return []
            queue = self.queue.flows[flow]
            skipped: list[WorkItem] = []
            while queue and len(batch) < max_batch:
                item = queue.popleft()
                if item.deadline is not None and item.deadline < now:
                    self._dequeued(item)
                    self.expired.append(item)
                elif not batch or (item.task == batch[0].task and item.package == batch[0].package):
                    batch.append(item)
                else:
                    skipped.append(item)
            queue.extendleft(reversed(skipped))
        est = self.estimator.get(batch[0].task) * len(batch)
        self._dequeued(batch[0], len(batch))
        self.queue.charge(flow, est)
        self.busy_until = now + est
        return batch

    def end_batch(self, now: float) -> None:
        """The running batch is computed (its exits are applied later, by ``finish_batch``)."""
        self.busy_until = now

    def finish_batch(self, batch: list[WorkItem], features: np.ndarray | None, logits: np.ndarray,
                     seconds: float, now: float) -> tuple[list[Finished], list[WorkItem]]:
        """Apply the exit rule to a computed batch. Returns (finished items, items needing the next task).
        ``features`` None: the driver does not carry them (the simulator, where only their size matters)."""
        task = batch[0].task
        pkg = self.pkgs.get(batch[0].package or self.first, self.pkg)
        spec = pkg.task(task)
        last = task == pkg.num_tasks
        per_item = seconds / len(batch)
        self.estimator.update(task, per_item)
        self.tasks_run[task] = self.tasks_run.get(task, 0) + len(batch)
        finished, onward = [], []
        for i, item in enumerate(batch):
            item.timings.append((self.name, task, per_item))
            threshold = item.thresholds[task - 1] if self.rules.exits or last else 1.0
            exits, label, conf = exit_decision(logits[i], spec.temperature, threshold, last)
            if exits:
                finished.append(Finished(item, label, task, conf))
            else:
                item.task = task + 1
                item.x = None if features is None else features[i:i + 1]
                onward.append(item)
        return finished, onward
