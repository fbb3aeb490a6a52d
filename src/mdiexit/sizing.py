"""How many devices a rate needs (`mdiexit plan --target-rate`, the pilot): copies of one device kind added to a
cluster one at a time, each time re-solving the planner's limit (mdiexit.planner), until it reaches the rate or
stops growing. Pure, as the planner is."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mdiexit.planner import NodeTimes, plan_throughput

if TYPE_CHECKING:
    from mdiexit.config import ClusterConfig, NodeConfig
    from mdiexit.package import Package

MAX_DEVICES = 64  # how many devices `devices_needed` adds at most


def device_kind(node: NodeConfig) -> tuple:
    """What makes two devices alike: their speed, the tasks they hold and their engine threads."""
    return node.slowdown, node.rated_gmacs, node.tasks, node.threads


def default_template(cluster: ClusterConfig) -> NodeConfig:
    """The first worker of the most common worker kind (the source when there are no workers)."""
    workers = cluster.workers or (cluster.source,)
    counts = Counter(device_kind(n) for n in workers)
    return max(workers, key=lambda n: counts[device_kind(n)])  # max keeps the first of equals


def with_copies(cluster: ClusterConfig, template: str, count: int) -> ClusterConfig:
    """The cluster plus ``count`` workers like ``template`` (its device, tasks and link), each with the template's
    neighbours both ways; names NAME+1, NAME+2, ... and fresh ports above the highest one in use."""
    if count <= 0:
        return cluster
    t = cluster.node(template)
    port = max(n.port for n in cluster.nodes)
    copies = [dataclasses.replace(t, name=f"{t.name}+{i}", role="worker", port=port + i, public_key=None)
              for i in range(1, count + 1)]
    names = [c.name for c in copies]
    neighbours = {n: nb + tuple(names) if template in nb else nb for n, nb in cluster.neighbours.items()}
    for c in copies:
        neighbours[c.name] = cluster.neighbours_of(template)
    return dataclasses.replace(cluster, nodes=cluster.nodes + tuple(copies), neighbours=neighbours)


@dataclass(frozen=True)
class Growth:
    """How many devices like ``template`` reach ``target_per_s`` (None: not within ``tried``), and what they give."""

    template: str
    target_per_s: float
    devices: int | None
    throughput_per_s: float  # with that many devices (or with ``tried`` when the target is out of reach)
    tried: int
    plateau: bool  # one more device would not raise the limit: the bottleneck is elsewhere

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def devices_needed(cluster: ClusterConfig, pkg: Package, mode: str, exit_fraction: Sequence[float],
                   times: Mapping[str, NodeTimes], target_per_s: float, template: str | None = None,
                   max_devices: int = MAX_DEVICES) -> Growth:
    """Add devices like ``template`` (default: :func:`default_template`) one at a time, re-solving, until the limit
    reaches ``target_per_s``. The limit is concave in the number of identical copies (an LP's optimum is concave in
    its resources, and copies are interchangeable), so the first copy that adds nothing ends the search."""
    name = template or default_template(cluster).name
    cluster.node(name)  # KeyError names a missing one
    prev = None
    for count in range(max_devices + 1):
        grown = with_copies(cluster, name, count)
        tm = {**times, **{f"{name}+{i}": times[name] for i in range(1, count + 1)}}
        lam = plan_throughput(grown, pkg, mode, exit_fraction, tm, tidy=False).throughput_per_s
        if lam >= target_per_s * (1 - 1e-9):
            return Growth(name, target_per_s, count, lam, count, False)
        if prev is not None and lam <= prev * (1 + 1e-7):
            return Growth(name, target_per_s, None, lam, count, True)
        prev = lam
    return Growth(name, target_per_s, None, prev or 0.0, max_devices, False)
