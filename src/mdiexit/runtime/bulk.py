"""Bulk transfers that never crowd out the data (DESIGN §9): a joiner's model package leaves the source in PARTs,
one at a time, each only when nothing else waits in the source's egress, and spaced so that the parts take at most
`BULK_SHARE` of the egress's rate. An item's message queued behind a part waits at most that one part's time on the
wire (16 KB: 6.5 ms at 20 Mbit/s); sent whole, a 9 MB package held the uplink for 3.7 s.

No thread of its own: the node's loop calls ``pump`` after every round, and again when it asks to be.

    sender = BulkSender(egress, lambda peer, frames: links[peer].send(frames, now()))
    sender.add("cam2", [frames_of_part_0, frames_of_part_1, ...])
    loop.after.append(sender.pump)     # pump(t) sends a part when one may go; returns when to look again
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger("mdiexit.bulk")

PART_BYTES = 16 << 10  # a part's payload
BULK_SHARE = 0.5  # the parts take at most this share of the egress's rate
UNLIMITED_GAP_S = 0.001  # between parts on an unlimited egress
IDLE_RECHECK_S = 0.005  # while data waits in the egress, look again this often


class BulkSender:
    """Sends queued transfers' parts, paced against the node's egress (runtime.links.Egress)."""

    def __init__(self, egress, send: Callable[[str, list], None]):
        self.egress, self.send = egress, send
        self.pending: deque[tuple[str, list]] = deque()  # (peer, a part's frames), in order
        self.next_at = float("-inf")  # the next part may not leave before this (its share of the egress)

    def add(self, peer: str, parts: list[list]) -> None:
        """Queue ``parts`` (each a message's frames) for ``peer``."""
        self.pending.extend((peer, frames) for frames in parts)

    def pump(self, t: float) -> float | None:
        """Send the next part if it may go at ``t``. Returns when to call again (None: nothing queued)."""
        if not self.pending:
            return None
        if t < self.next_at:
            return self.next_at
        if self.egress.queued_bytes(t) > 0:  # data is waiting: it goes first
            return t + IDLE_RECHECK_S
        peer, frames = self.pending.popleft()
        nbytes = sum(len(memoryview(f).cast("B")) for f in frames)
        try:
            self.send(peer, frames)
        except KeyError:  # the peer left meanwhile: its remaining parts go nowhere
            log.warning("bulk transfer to %s dropped: no link to it any more", peer)
            self.pending = deque(p for p in self.pending if p[0] != peer)
            return t
        rate = self.egress.rate_bps(t)
        self.next_at = t + (nbytes * 8 / (rate * BULK_SHARE) if rate else UNLIMITED_GAP_S)
        return self.next_at
