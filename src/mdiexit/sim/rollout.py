"""A roll-out in virtual time (`mdiexit simulate --rollout PACKAGE`), for planning: how long shipping takes on the
site's links, and what the steps and shadow copies do to the load. The simulator's counterpart of runtime.deploy:
the same SourceCore roll-out (runtime.rollout) decides the steps, gates and rollback, and its shipping plan whom to
ship through; this shell moves the archive over the links and loads it.

Modelled: the archive crossing each sender's egress at the bulk share of its rate (runtime.bulk), one transfer
after another, relays included; a node holding the version once its archive arrived and it loaded (``load_s``);
every item and shadow copy on its version's exact logits (each version's own, computed once like the served one's).
Not modelled: the parts waiting for the data in the egress (the runtime's are sent only into an idle egress), and a
version's own speed (both versions run at the served one's device times)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mdiexit.package import Package, incompatible, load_package, package_archive
from mdiexit.runtime.bulk import BULK_SHARE
from mdiexit.runtime.options import ClusterError
from mdiexit.runtime.rollout import RolloutPlan, shipping_plan
from mdiexit.sim.model import Items, load_items_logits

if TYPE_CHECKING:
    from mdiexit.sim.world import SimNode, SimSource, World


@dataclass(frozen=True)
class RolloutRequest:
    """What `mdiexit rollout` would ask, and when (seconds after admission starts)."""

    package: Path
    at_s: float = 10.0
    steps: tuple[float, ...] = (0.05, 0.25, 1.0)
    step_s: float = 20.0
    shadow: float = 0.05
    min_agreement: float = 0.95
    max_exit_shift: float = 0.25
    max_p95_ms: float | None = None
    load_s: float = 1.0  # a node's time to check, unpack and load the archive


@dataclass
class SimDeploy:
    """The source's roll-out shell in the simulator."""

    world: World
    source: SimSource
    request: RolloutRequest
    pkg: Package
    items: Items  # the source's stream, with the new version's logits
    archive_bytes: int
    shipped: set[str] = field(default_factory=set)
    bulk_free_at: dict[str, float] = field(default_factory=dict)  # node -> when its egress ends the transfers it has

    @classmethod
    def prepare(cls, world: World, source: SimSource, request: RolloutRequest, served: Package, items: str,
                data_dir: Path | None, limit: int | None) -> SimDeploy:
        pkg = load_package(request.package, check_onnx=True)
        if (why := incompatible(pkg, served)) is not None:
            raise ClusterError(f"--rollout {request.package}: {why}")
        return cls(world, source, request, pkg, load_items_logits(pkg, items, data_dir, limit),
                   len(package_archive(request.package)[0]))

    def begin(self) -> None:
        """The operator's package reached the source: it loads it, starts the roll-out and ships it."""
        self.world.at(self.request.load_s, self._loaded)

    def _loaded(self) -> None:
        src, r, t = self.source, self.request, self.world.env.now
        plan = RolloutPlan(new=self.pkg.version, old=src.sc.package, steps=r.steps, step_s=r.step_s, shadow=r.shadow,
                           min_agreement=r.min_agreement, max_exit_shift=r.max_exit_shift,
                           max_p95_s=None if r.max_p95_ms is None else r.max_p95_ms / 1000)
        if src.sc.start_rollout(plan, self.pkg.name, t) is not None:
            return
        src.core.add_version(self.pkg)
        src.sc.rollout.on_packages(src.name, list(src.core.pkgs), None, t)
        self.ship()

    def ship(self) -> None:
        """Every other node, as the runtime's source ships it (runtime.rollout.shipping_plan)."""
        due = {n: node.cfg.bandwidth_mbps for n, node in self.world.nodes.items()
               if n != self.source.name and n not in self.shipped}
        self.shipped |= set(due)
        for target, relay_to in shipping_plan(self.source.cfg.bandwidth_mbps, due).items():
            self.transfer(self.source, target, relay_to)

    def transfer(self, sender: SimNode, target: str, relay_to: list[str]) -> None:
        """The archive over ``sender``'s egress at the bulk share of its rate, after any transfer before it."""
        t = self.world.env.now
        rate = sender.cfg.bandwidth_mbps * 1e6 * BULK_SHARE if sender.cfg.bandwidth_mbps else None
        start = max(t, self.bulk_free_at.get(sender.name, t))
        done = self.bulk_free_at[sender.name] = start + (self.archive_bytes * 8 / rate if rate else 0.0)
        self.world.at(done - t + self.request.load_s, self._arrived, target, relay_to)

    def _arrived(self, target: str, relay_to: list[str]) -> None:
        node = self.world.nodes[target]
        node.core.add_version(self.pkg)  # its next STATE tells the source and its peers
        for peer in relay_to:
            self.transfer(node, peer, [])

    def retire(self, package: str) -> None:
        for node in self.world.nodes.values():
            node.core.remove_version(package)

    def logits(self, task: int, keys: list[int]):
        return self.items.logits[task - 1][keys]


def stream_keys(source: SimSource, item_ids: list[int]) -> list[int]:
    """Each item's place in its source's stream: a shadow copy's is its item's."""
    records, twins = source.sc.ledger.records, source.sc.rollout.twins if source.sc.rollout is not None else {}
    return [records[twins.get(i, i)].key for i in item_ids]
