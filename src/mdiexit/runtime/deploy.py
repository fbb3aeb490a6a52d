"""The source's side of a roll-out (docs/guide/rollout.md), on its loop: the operator's ROLLOUT and the package's
PARTs come in; the package is checked and loaded here first, then shipped to every node, relayed by the node with
the fastest uplink where that beats the source's own, in paced parts behind the data (runtime.bulk); PROGRESS goes
back to the operator as the roll-out moves; a retired version is unloaded everywhere. Every decision (which version
an item runs on, the steps, the gates) is the SourceCore's roll-out's (runtime.rollout)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import zmq

from mdiexit.package import PackageError
from mdiexit.protocol.codec import encode
from mdiexit.protocol.messages import Control, Part, Progress, Rollout, Ship
from mdiexit.runtime.join import PackageParts, part_frames
from mdiexit.runtime.rollout import RolloutPlan, shipping_plan
from mdiexit.runtime.versions import Version
from mdiexit.security import is_operator

if TYPE_CHECKING:
    from mdiexit.runtime.source import SourceProcess

log = logging.getLogger("mdiexit.rollout")
PROGRESS_PERIOD_S = 1.0  # the operator hears where the roll-out stands this often
RESHIP_AFTER_S = 30.0  # a node still without the new version is shipped it again after this long
RECEIVE_TIMEOUT_S = 120.0  # the operator's package must have arrived whole within this long
UNLOAD_AGAIN_S = 3.0  # a node still reporting a retired version (it restarted with it) is told again after this long


class Deployer:
    """A roll-out's shell at the source. One at a time; its decisions are ``source.sc.rollout``'s."""

    def __init__(self, source: SourceProcess):
        self.source = source
        self.incoming: tuple[Rollout, PackageParts, float] | None = None  # the operator's package, arriving
        self.reply: zmq.Socket | None = None  # to the operator (a PUSH to its reply address)
        self.archive: tuple[bytes, str] | None = None  # the new version's, to ship
        self.shipped: dict[str, float] = {}  # node -> when it was last shipped the new version
        self.unloads: dict[str, float] = {}  # node -> when it was last told to unload a retired version
        self.told_at = float("-inf")

    # ---------------------------------------------------------------- the operator
    def on_rollout(self, msg: Rollout) -> None:
        src = self.source
        if msg.sender != src.name and not is_operator(msg.sender):
            src.node.reject("impersonation", f"ROLLOUT from {msg.sender!r}, who is no operator (a key in "
                                             "KEYS_DIR/operators/, or the source's own)")
            return
        self._close_reply()
        self._open_reply(msg)
        if len(src.node.cluster.sources) > 1:
            self.tell("refused", "a site of several sources cannot roll a version out yet: every source would have "
                                 "to split its items alike")
            return
        busy = self.incoming is not None or (src.sc.rollout is not None and not src.sc.rollout.done)
        if busy:
            ongoing = src.sc.rollout.plan.new if src.sc.rollout is not None else "another package"
            self.tell("refused", f"a roll-out of {ongoing} is in progress; wait for it to end")
            return
        self.incoming = (msg, PackageParts(msg.package_sha256, msg.package_bytes, msg.parts), src.clock.now())
        self.tell("receiving", f"receiving the package from {msg.sender} ({msg.package_bytes / 1e6:.1f} MB)")

    def _open_reply(self, msg: Rollout) -> None:
        node = self.source.node
        sock = node.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        if node.identity is not None:  # the operator's reply address serves with the key it authenticated with
            sock.curve_secretkey, sock.curve_publickey = node.identity.secret, node.identity.public
            sock.curve_serverkey = node.identity.public if msg.sender == self.source.name else \
                node.auth.key_of(msg.sender)
        sock.connect(f"tcp://{msg.reply_host}:{msg.reply_port}")
        self.reply = sock

    def _close_reply(self) -> None:
        if self.reply is not None:
            self.reply.close()
            self.reply = None

    def tell(self, phase: str, text: str, routine: bool = False) -> None:
        """A PROGRESS to the operator (dropped when it stopped listening); logged here too, the ``routine`` ones
        (each second's) at info level."""
        src = self.source
        ro = src.sc.rollout
        figures = {} if ro is None or phase in ("receiving", "refused") else {
            "package": ro.plan.new, "fraction": ro.fraction, "agreement": ro.agreement, "compared": ro.compared,
            "items_on_new": ro.items_on_new}
        (log.info if routine else log.warning)("%s: roll-out: %s", src.name, text)
        if self.reply is not None:
            try:
                self.reply.send_multipart(encode(Progress(sender=src.name, phase=phase, text=text, **figures)),
                                          zmq.NOBLOCK)
            except zmq.Again:
                pass
        self.told_at = src.clock.now()
        if phase in ("completed", "rolled_back", "refused"):
            self._close_reply()

    def on_part(self, msg: Part, payload: bytes) -> None:
        if self.incoming is None:
            return
        request, parts, _ = self.incoming
        if not parts.add(msg, payload) or not parts.complete:
            return
        self.incoming = None
        node = self.source.node
        archive = bytes(parts.data)
        try:
            folder = node.versions.shipments.unpack(request.package_sha256, archive)
        except PackageError as e:
            self.tell("refused", f"the package is not usable: {e}")
            return
        self.tell("receiving", "received; checking and loading it here first")
        node.versions.install(folder, lambda version, error: self._loaded(request, archive, version, error))

    def _loaded(self, request: Rollout, archive: bytes, version: Version | None, error: str | None) -> None:
        src = self.source
        if version is None:
            self.tell("refused", f"the package does not load ({error})")
            return
        t = src.clock.now()
        plan = RolloutPlan(new=version.pkg.version, old=src.sc.package, steps=tuple(request.steps),
                           step_s=request.step_s, shadow=request.shadow, min_agreement=request.min_agreement,
                           max_exit_shift=request.max_exit_shift,
                           max_p95_s=None if request.max_p95_ms is None else request.max_p95_ms / 1000)
        if (why := src.sc.start_rollout(plan, version.pkg.name, t)) is not None:
            self.tell("refused", why)
            return
        src.node.versions.add(version)
        src.sc.rollout.on_packages(src.name, list(src.node.versions.loaded), None, t)
        self.archive = (archive, request.package_sha256)
        self.shipped.clear()
        self.ship(t)
        self.tell("shipping", f"{plan.new} loaded here; shipping it to {len(self.targets())} node(s)")

    # ---------------------------------------------------------------- the nodes
    def targets(self) -> list[str]:
        """The live nodes that do not hold the new version yet."""
        src = self.source
        ro = src.sc.rollout
        return [n for n in src.node.links if n in src.reports and n not in src.down and not ro.holders.get(n)]

    def ship(self, t: float) -> None:
        """Ship the new version to every live node still without it (not shipped to within RESHIP_AFTER_S): from the
        source, or through the node with the fastest uplink, which relays it to the others, where that is faster."""
        ro = self.source.sc.rollout
        if ro is None or ro.phase == "rolled_back" or self.archive is None:
            return  # (once completed, a node that joins or restarts still gets it)
        due = [n for n in self.targets() if n in ro.relapsed or t - self.shipped.get(n, float("-inf")) > RESHIP_AFTER_S]
        ro.relapsed.clear()
        if not due:
            return
        cluster = self.source.node.cluster
        plan = shipping_plan(self.source.node.cfg.bandwidth_mbps, {n: cluster.node(n).bandwidth_mbps for n in due})
        data, digest = self.archive
        for name, relay_to in plan.items():
            parts = part_frames(self.source.name, self.archive)
            msg = Ship(sender=self.source.name, package=ro.plan.new, package_sha256=digest, package_bytes=len(data),
                       parts=len(parts), relay_to=relay_to)
            self.source.node.links[name].send(encode(msg), t)
            self.source.node.bulk.add(name, parts)
        for name in due:
            self.shipped[name] = t

    def forget(self, node: str) -> None:
        """``node`` went down: whatever it held or was receiving may be gone; it is shipped again when it is back."""
        self.shipped.pop(node, None)
        self.unloads.pop(node, None)

    def tick(self, t: float) -> None:
        """After every control step: the operator's package overdue, nodes to ship to, the roll-out's news."""
        if self.incoming is not None and t - self.incoming[2] > RECEIVE_TIMEOUT_S:
            self.incoming = None
            self.tell("refused", f"the package did not arrive whole within {RECEIVE_TIMEOUT_S:g} s")
        ro = self.source.sc.rollout
        if ro is None:
            return
        self.ship(t)
        self.unload_stale(t)
        for line in ro.news:
            self.tell(ro.phase if ro.done else "step", line)
        ro.news.clear()
        if not ro.done and t - self.told_at >= PROGRESS_PERIOD_S:
            agreement = "" if ro.agreement is None else f", agreement {ro.agreement:.3f} over {ro.compared}"
            waiting = f", waiting for {', '.join(self.targets())}" if ro.phase == "shipping" else ""
            self.tell(ro.phase, f"{ro.phase}: {100 * ro.fraction:g} % on {ro.plan.new}, {ro.items_on_new} items on "
                                f"it so far{agreement}{waiting}", routine=True)

    def retire(self, package: str) -> None:
        """No item runs on ``package`` any more: every node unloads it, and so does the source. After a completed
        roll-out a joiner is welcomed with the new version."""
        src = self.source
        t = src.clock.now()
        for name in src.node.links:
            if name not in src.down:
                self._unload(name, package, t)
        src.node.versions.unload(package)
        if package == src.sc.rollout.plan.new:
            self.archive = None
        else:
            src.welcome_archive = self.archive

    def _unload(self, node: str, package: str, t: float) -> None:
        self.unloads[node] = t
        self.source.node.links[node].send(encode(Control(sender=self.source.name, action="unload", package=package)), t)

    def unload_stale(self, t: float) -> None:
        """A node that restarted with a version retired since (its cluster file's) unloads it once it holds the
        current one."""
        src = self.source
        for node, held in src.packages_of.items():
            stale = [v for v in held if v in src.sc.retired]
            if stale and src.sc.package in held and node in src.node.links and \
                    t - self.unloads.get(node, float("-inf")) > UNLOAD_AGAIN_S:
                for v in stale:
                    self._unload(node, v, t)
