"""The package a joiner receives: cut into PARTs behind the WELCOME, put together in any order, checked whole;
and the bulk sender that paces the parts behind the data (runtime/join.py, runtime/bulk.py)."""

from __future__ import annotations

import hashlib
import random

import pytest

from mdiexit.config import load_cluster
from mdiexit.package import package_archive
from mdiexit.protocol.codec import ProtocolError, decode
from mdiexit.protocol.messages import Part, Welcome
from mdiexit.runtime.bulk import BulkSender
from mdiexit.runtime.join import JoinError, PackageParts, unpack_welcome, welcome_frames
from mdiexit.runtime.links import Egress
from tests.runtime.conftest import write_cluster


def test_the_package_arrives_in_parts_in_any_order_and_unpacks_checked(tmp_path, tiny_package):
    cluster = load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [10, 10]))
    archive = package_archive(tiny_package)
    welcome_msg, parts = welcome_frames("source", cluster, {}, archive, part_bytes=4096)
    welcome, _ = decode(welcome_msg)
    assert isinstance(welcome, Welcome) and welcome.parts == len(parts) == -(-len(archive[0]) // 4096)
    package = PackageParts(welcome.package_sha256, welcome.package_bytes, welcome.parts)
    decoded = [decode(frames) for frames in parts]
    random.Random(0).shuffle(decoded)
    for msg, arrays in decoded:
        assert isinstance(msg, Part) and not package.complete
        assert package.add(msg, bytes(arrays[0]))
    assert package.complete and hashlib.sha256(package.data).hexdigest() == welcome.package_sha256
    path = unpack_welcome(welcome, bytes(package.data), tmp_path / "joiner")
    assert (path.parent / "package" / "manifest.json").read_bytes() == (tiny_package / "manifest.json").read_bytes()


def test_a_stray_or_damaged_part_is_refused(tmp_path, tiny_package):
    cluster = load_cluster(write_cluster(tmp_path / "c.yaml", tiny_package, [10, 10]))
    welcome_msg, parts = welcome_frames("source", cluster, {}, package_archive(tiny_package), part_bytes=4096)
    welcome, _ = decode(welcome_msg)
    package = PackageParts(welcome.package_sha256, welcome.package_bytes, welcome.parts)
    part, arrays = decode(parts[0])
    other = Part(sender="source", package_sha256="0" * 64, index=0, offset=0, arrays=part.arrays)
    assert not package.add(other, bytes(arrays[0]))  # another package's
    past_end = Part(sender="source", package_sha256=welcome.package_sha256, index=0,
                    offset=welcome.package_bytes - 10, arrays=part.arrays)
    assert not package.add(past_end, bytes(arrays[0]))  # outside the archive
    with pytest.raises(ProtocolError):
        decode([parts[0][0], b"truncated"])
    for frames in parts:  # every part, then one byte flipped: the whole is checked before it is unpacked
        msg, arrays = decode(frames)
        package.add(msg, bytes(arrays[0]))
    package.data[100] ^= 0xFF
    with pytest.raises(JoinError, match="corrupted"):
        unpack_welcome(welcome, bytes(package.data), tmp_path / "joiner")


def test_parts_wait_while_data_is_queued_and_keep_to_their_share_of_the_egress():
    """On a 1 Mbit/s egress holding 40 kB of data, no part leaves until the data has; then 4 kB parts leave at
    half the rate. Driven as the node's loop drives it, in virtual time: pump(t) says when to look again."""
    egress = Egress(1e6)
    egress.reserve(40_000, 0.0)  # data ahead: 0.32 s on the wire
    ahead_s = egress.wait_s(0.0)
    assert ahead_s > 0.1
    sent: list[tuple[float, int]] = []
    clock = [0.0]
    sender = BulkSender(egress, lambda peer, frames: sent.append((clock[0], len(frames[0]))))
    assert sender.pump(0.0) is None  # nothing queued: no call wanted
    sender.add("joiner", [[b"x" * 4000] for _ in range(5)])
    calls = 0
    while (want := sender.pump(clock[0])) is not None:
        assert want > clock[0] or sent  # it never asks to be called again at once without progress
        clock[0] = max(want, clock[0])
        calls += 1
        assert calls < 1000
    assert [n for _, n in sent] == [4000] * 5
    assert sent[0][0] >= ahead_s  # behind the data
    gaps = [b - a for (a, _), (b, _) in zip(sent, sent[1:], strict=False)]
    assert all(g >= 4000 * 8 / (1e6 * 0.5) for g in gaps)  # each part waits out its share of the rate
