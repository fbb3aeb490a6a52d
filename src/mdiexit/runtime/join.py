"""Joining a running cluster with the source's address alone (DESIGN §9).

    mdiexit keys allow PUBKEY --name N --keys-dir DIR           # the operator, at the source
    mdiexit worker --join tcp://SOURCE:PORT --name N --key N.key_secret --source-key source.key [--slowdown F]

The joiner listens on its own port and sends JOIN to the source. The source (which admits the joiner's key only
if the operator allowed it) answers WELCOME: the cluster view as a cluster file, every member's public key in
it, and the model package's size and SHA-256; the package follows as a tar archive in PARTs, paced so that they
never crowd out the data (runtime/bulk.py), and the joiner checks the whole before unpacking. The
source tells every node about the newcomer (MEMBER), and the joiner starts as an ordinary worker.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import time
from pathlib import Path

import numpy as np
import yaml
import zmq

from mdiexit.config import ClusterConfig, cluster_dict
from mdiexit.protocol.codec import Limits, ProtocolError, decode, describe, encode
from mdiexit.protocol.messages import Join, Member, Part, Welcome
from mdiexit.runtime.bulk import PART_BYTES
from mdiexit.security import Identity, NodeAuthenticator, make_client, make_server, read_public, read_secret

log = logging.getLogger("mdiexit.join")
PART_TIMEOUT_S = 30.0  # a joiner waits this long for the next part of the package before it gives up


class JoinError(RuntimeError):
    """Joining failed; the message says why and what to check."""


# ------------------------------------------------------------------ the source's side

def cluster_view(cluster: ClusterConfig, public_keys: dict[str, bytes]) -> str:
    """The cluster file a joiner receives: every member's public key spelled out, the package beside it."""
    d = cluster_dict(cluster)
    d.update(package="package", keys_dir=None)
    for n in d["nodes"]:
        key = public_keys.get(n["name"])
        n["public_key"] = key.decode() if key is not None else n.get("public_key")
    return yaml.safe_dump(d, sort_keys=False)


def welcome_frames(sender: str, cluster: ClusterConfig, public_keys: dict[str, bytes],
                   archive: tuple[bytes, str], part_bytes: int = PART_BYTES) -> tuple[list, list[list]]:
    """The WELCOME's frames, and each PART's (runtime.bulk paces them)."""
    data, digest = archive
    parts = part_frames(sender, archive, part_bytes)
    msg = Welcome(sender=sender, cluster_yaml=cluster_view(cluster, public_keys), package_sha256=digest,
                  package_bytes=len(data), parts=len(parts))
    return encode(msg), parts


def part_frames(sender: str, archive: tuple[bytes, str], part_bytes: int = PART_BYTES) -> list[list]:
    """A package archive cut into ``part_bytes`` pieces: each PART's frames."""
    data, digest = archive
    parts = []
    for index, offset in enumerate(range(0, len(data), part_bytes)):
        arr = np.frombuffer(data, np.uint8, count=min(part_bytes, len(data) - offset), offset=offset)
        part = Part(sender=sender, package_sha256=digest, index=index, offset=offset,
                    arrays=[describe("part", arr, "zstd")])
        parts.append(encode(part, [arr]))
    return parts


def member_message(sender: str, join: Join, public_key: str | None) -> Member:
    fields = {f: getattr(join, f) for f in Member.__struct_fields__ if f not in ("sender", "version", "public_key")}
    return Member(sender=sender, public_key=public_key, **fields)


# ------------------------------------------------------------------ the joiner's side

def _key_text(value: str) -> bytes:
    path = Path(value)
    return read_public(path) if path.is_file() else value.encode()


def join_cluster(source: str, join: Join, workdir: Path, key_file: Path | None, source_key: str | None,
                 timeout_s: float = 60.0) -> Path:
    """Ask the source at `source` (tcp://HOST:PORT) to let this device in. Returns the path of the cluster
    file written in `workdir`, with the checked package unpacked beside it. ``key_file`` None: insecure."""
    ctx = zmq.Context()
    auth: NodeAuthenticator | None = None
    inbox, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (inbox, push):
        s.setsockopt(zmq.LINGER, 500)
    try:
        if key_file is not None:
            if source_key is None:
                raise JoinError("--source-key is needed to authenticate the source (its .key file or key text)")
            public, secret = read_secret(key_file)
            ident = Identity(join.name, public, secret, {"source": _key_text(source_key)})
            make_server(inbox, ident)  # only the source can reach it: its key is the only one it knows
            auth = NodeAuthenticator(ctx, {"source": ident.peers["source"]})
            auth.begin()
            make_client(push, ident, "source")
        try:
            inbox.bind(f"tcp://*:{join.port}")
        except zmq.ZMQError as e:
            raise JoinError(f"cannot listen on port {join.port} ({e}); choose another with --port") from None
        push.connect(source)
        push.send_multipart(encode(join))
        log.warning("%s: asked %s to join; waiting for the cluster view and the model package", join.name, source)
        return _receive_welcome(inbox, workdir, timeout_s, source)
    finally:
        inbox.close()
        push.close()
        if auth is not None:
            auth.stop()
        ctx.term()


class PackageParts:
    """A package archive as its PARTs arrive (after a WELCOME, a SHIP or a ROLLOUT): complete once every part has
    come."""

    def __init__(self, sha256: str, nbytes: int, parts: int):
        self.sha256, self.parts = sha256, parts
        self.data = bytearray(nbytes)
        self.received: set[int] = set()

    def add(self, part: Part, payload: bytes) -> bool:
        """Take one part (False: not one of this package's, or out of its bounds: ignored). True when it fits."""
        end = part.offset + len(payload)
        if part.package_sha256 != self.sha256 or end > len(self.data) or part.index >= self.parts:
            return False
        self.data[part.offset:end] = payload
        self.received.add(part.index)
        return True

    @property
    def complete(self) -> bool:
        return len(self.received) == self.parts


def _receive_welcome(inbox: zmq.Socket, workdir: Path, timeout_s: float, source: str) -> Path:
    deadline = time.monotonic() + timeout_s
    package: PackageParts | None = None
    welcome: Welcome | None = None
    shown = 0.0
    while time.monotonic() < deadline:
        if not inbox.poll(200):
            continue
        try:
            msg, arrays = decode(inbox.recv_multipart(copy=False), Limits(max_bytes=64 << 20))
        except ProtocolError as e:
            log.warning("dropped a bad message while joining (%s)", e)
            continue
        if isinstance(msg, Welcome):
            welcome, package = msg, PackageParts(msg.package_sha256, msg.package_bytes, msg.parts)
            log.warning("welcomed by %s: receiving the model package (%.1f MB in %d parts)", source,
                        msg.package_bytes / 1e6, msg.parts)
        elif isinstance(msg, Part) and package is not None and package.add(msg, bytes(arrays[0])):
            deadline = max(deadline, time.monotonic() + PART_TIMEOUT_S)  # a transfer in progress may take its time
            if (share := len(package.received) / package.parts) >= shown + 0.25 or package.complete:
                shown = share
                log.warning("model package: %.0f %% received", 100 * share)
            if package.complete:
                return unpack_welcome(welcome, bytes(package.data), workdir)
    if package is not None:
        raise JoinError(f"the model package from {source} stopped arriving ({len(package.received)} of "
                        f"{package.parts} parts); try again")
    raise JoinError(f"no answer from {source} within {timeout_s:.0f} s: is the source running, is the address "
                    "right, and did the operator allow this key (`mdiexit keys allow`)?")


def unpack_welcome(msg: Welcome, archive: bytes, workdir: Path) -> Path:
    unpack_archive(archive, msg.package_sha256, workdir / "package")
    path = workdir / "cluster.yaml"
    path.write_text(msg.cluster_yaml)
    return path


def unpack_archive(archive: bytes, sha256: str, folder: Path) -> None:
    """Check a package archive against its SHA-256 and unpack it into ``folder`` (JoinError: what went wrong)."""
    digest = hashlib.sha256(archive).hexdigest()
    if digest != sha256:
        raise JoinError(f"the model package arrived corrupted (SHA-256 {digest[:12]}, expected {sha256[:12]}); "
                        "try again")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    raise JoinError(f"the package archive holds an unexpected entry {member.name!r}")
            tar.extractall(folder, filter="data")
    except tarfile.TarError as e:
        raise JoinError(f"the package archive is not a tar archive ({e})") from None
