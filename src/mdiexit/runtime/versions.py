"""The package versions a node holds (docs/guide/rollout.md): the one it started with and, during a roll-out, the
one shipped to it. Each item names its version (DATA.package), and every task, exit threshold and feature code it
meets is that version's.

A version arrives as a SHIP and its PARTs (from the source, or relayed by a peer that holds it already); the node
checks the archive's SHA-256, unpacks it into its own folder and loads it off its loop (ONNX Runtime sessions and
the device's profile of them take a while), then reports it in its STATE. The loaded version is profiled under keys
tagged with its name, so the emulated device charges each version's own times."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from mdiexit.config import ClusterConfig, NodeConfig
from mdiexit.package import Package, PackageError, incompatible, load_package
from mdiexit.protocol.codec import encode
from mdiexit.protocol.messages import Part, Ship
from mdiexit.runtime.device import ModelEngine, calibrate, make_engine
from mdiexit.runtime.events import WorkItem
from mdiexit.runtime.join import JoinError, PackageParts, part_frames, unpack_archive

if TYPE_CHECKING:
    from mdiexit.runtime.node import NodeProcess

log = logging.getLogger("mdiexit.node")
KEEP_RETIRED = 2  # versions kept loaded after they were retired (a process serving for months rolls out many)


@dataclass
class Version:
    """One package version, loaded: its package, its engine, and the tag of its device-model keys (() for the
    version the node started with, whose keys are the plain ones)."""

    pkg: Package
    engine: ModelEngine
    tag: tuple[str, ...] = ()
    profile: dict = field(default_factory=dict)  # its device-model keys' profiled host seconds, to merge

    def key(self, kind: str, k: int) -> tuple:
        return (kind, k, *self.tag)


def load_version(folder: Path, old: Version, old_profile: dict, cfg: NodeConfig, held: frozenset[int],
                 cluster: ClusterConfig) -> Version:
    """Load the package unpacked in ``folder`` for the tasks ``held``, and its emulated device's times (its keys
    tagged with its version, merged into the device model on the loop). Raises PackageError with the reason.

    The host is busy serving while a version loads, so its times are not taken as they are measured: the new and
    the served version are profiled side by side, now, and the new one's times are the served one's profile
    (``old_profile``: pinned, or taken on a quiet host) scaled by their ratio. A re-released model then runs at
    the very same emulated speed; profiled alone under load, it ran 1.6 times slower (docs/bench/rollout.md)."""
    pkg = load_package(folder, check_onnx=True)
    if (why := incompatible(pkg, old.pkg)) is not None:
        raise PackageError(why)
    engine = make_engine(pkg, cfg, cluster, held)
    measured = calibrate(engine, pkg, held, cfg, cluster).profiled_s
    beside = calibrate(old.engine, old.pkg, held, cfg, cluster).profiled_s if measured else {}
    version = Version(pkg, engine, (pkg.version,))
    for (kind, k), per_batch in measured.items():
        ref, kept = beside.get((kind, k), {}), old_profile.get(old.key(kind, k), {})
        version.profile[version.key(kind, k)] = {
            b: kept[b] * s / ref[b] if b in kept and ref.get(b) else s for b, s in per_batch.items()}
    return version


@dataclass
class Shipments:
    """The versions on their way to this node, by SHA-256, and the folder they are unpacked in."""

    name: str
    folder: Path | None = None
    receiving: dict[str, tuple[Ship, PackageParts]] = field(default_factory=dict)

    def begin(self, ship: Ship) -> None:
        if ship.package_sha256 not in self.receiving:
            self.receiving[ship.package_sha256] = (ship, PackageParts(ship.package_sha256, ship.package_bytes,
                                                                      ship.parts))

    def add(self, part: Part, payload: bytes) -> tuple[Ship, bytes] | None:
        """Take one PART; the SHIP and the whole archive once its last part came (None: not yet, or not ours)."""
        entry = self.receiving.get(part.package_sha256)
        if entry is None or not entry[1].add(part, payload) or not entry[1].complete:
            return None
        del self.receiving[part.package_sha256]
        return entry[0], bytes(entry[1].data)

    def unpack(self, sha256: str, archive: bytes) -> Path:
        """The archive, checked against ``sha256`` and unpacked in a folder of its own (PackageError: why not)."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix=f"mdiexit-{self.name}-versions-"))
        target = self.folder / sha256[:16]
        try:
            unpack_archive(archive, sha256, target)
        except JoinError as e:
            raise PackageError(str(e)) from None
        return target

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class HeldVersions:
    """A node's package versions (on its loop, which owns them; the compute thread reads ``of``): the loaded ones,
    those on their way here, and those retired since."""

    def __init__(self, node: NodeProcess, first: Version):
        self.node = node
        self.loaded: dict[str, Version] = {first.pkg.version: first}
        self.shipments = Shipments(node.name)
        self.error: str | None = None  # why the last version shipped here did not load
        # versions unloaded, the last few kept: a client may still name one, and a shadow copy of it may still be on
        # its way to the device (a batch handed to the compute executor just before the unload)
        self.retired: dict[str, Version] = {}

    def of(self, item: WorkItem) -> Version:
        """The version ``item`` runs on (the core routes an item only to nodes holding its version)."""
        name = item.package or self.node.core.first
        found = self.loaded.get(name) or self.retired.get(name)
        if found is None:
            raise KeyError(f"{self.node.name} holds no package {name}")
        return found

    def package(self, version: str) -> Package | None:
        """The package of ``version``, held or retired (None: never served here). Any thread may ask."""
        held = self.loaded.get(version) or self.retired.get(version)
        return held.pkg if held is not None else None

    def has_codec(self, item: WorkItem) -> bool:
        """Whether the item's version has a learned code for its features (another version's may not)."""
        version = self.loaded.get(item.package or self.node.core.first)
        return version is not None and version.engine.codec(item.task - 1) is not None

    # ---------------------------------------------------------------- arriving
    def on_ship(self, msg: Ship) -> None:
        """A version to hold: its PARTs follow (one held already is ignored)."""
        if msg.package not in self.loaded:
            self.shipments.begin(msg)

    def on_part(self, msg: Part, payload: bytes) -> None:
        got = self.shipments.add(msg, payload)
        if got is None:
            self.node.role.on_part(msg, payload)  # the source: a roll-out's package, from its operator
            return
        ship, archive = got
        try:
            folder = self.shipments.unpack(ship.package_sha256, archive)
        except PackageError as e:
            self.failed(ship.package, str(e))
            return
        self.install(folder, partial(self._installed, ship, archive))

    def install(self, folder: Path, then: Callable[[Version | None, str | None], None]) -> None:
        """Load the package in ``folder`` off the loop; ``then(version or None, error)`` runs on the loop."""
        node = self.node
        served, profile = self.loaded[node.core.first], dict(node.device.profiled_s)

        def load() -> None:
            try:
                version = load_version(folder, served, profile, node.cfg, node.held, node.cluster)
            except (PackageError, OSError, ValueError, RuntimeError) as e:  # ONNX Runtime raises RuntimeError kinds
                node.loop.post(partial(then, None, f"{type(e).__name__}: {e}"))
            else:
                node.loop.post(partial(then, version, None))
        threading.Thread(target=load, name=f"{node.name}-load", daemon=True).start()

    def _installed(self, ship: Ship, archive: bytes, version: Version | None, error: str | None) -> None:
        if version is None:
            self.failed(ship.package, error)
            return
        self.add(version)
        node = self.node
        for peer in ship.relay_to:  # peers this node reaches faster than the source does
            if peer in node.links:
                relay = msgspec.structs.replace(ship, sender=node.name, relay_to=[])
                node.links[peer].send(encode(relay), node.clock.now())
                node.bulk.add(peer, part_frames(node.name, (archive, ship.package_sha256)))

    def add(self, version: Version) -> None:
        """Hold ``version`` beside the others; the next heartbeat tells every peer."""
        node = self.node
        node.device.profiled_s.update(version.profile)
        self.loaded[version.pkg.version] = version
        node.core.add_version(version.pkg)
        self.error = None
        node.progress_sent_at = float("-inf")
        log.warning("%s: holds package %s beside %s", node.name, version.pkg.version, node.package_version)

    def failed(self, package: str, error: str) -> None:
        self.error = f"{package}: {error}"
        self.node.progress_sent_at = float("-inf")
        log.warning("%s: could not load package %s (%s)", self.node.name, package, error)

    # ---------------------------------------------------------------- leaving
    def unload(self, package: str) -> None:
        """No item runs on ``package`` any more (the source retired it): free it. The last version stays."""
        node = self.node
        if package not in self.loaded or len(self.loaded) < 2:
            return
        node.core.remove_version(package)
        self.retired[package] = self.loaded.pop(package)
        while len(self.retired) > KEEP_RETIRED:
            del self.retired[next(iter(self.retired))]
        node.pkg = self.loaded[node.core.first].pkg
        node.package_version = node.core.first
        node.progress_sent_at = float("-inf")
        log.warning("%s: unloaded package %s; serving %s", node.name, package, node.package_version)

    def remove(self) -> None:
        self.shipments.remove()
