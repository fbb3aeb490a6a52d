"""Joining a running cluster with the source's address alone (DESIGN §9).

    mdiexit keys allow PUBKEY --name N --keys-dir DIR           # the operator, at the source
    mdiexit worker --join tcp://SOURCE:PORT --name N --key N.key_secret --source-key source.key [--slowdown F]

The joiner listens on its own port and sends JOIN to the source. The source (which admits the joiner's key only
if the operator allowed it) answers WELCOME: the cluster view as a cluster file, every member's public key in
it, and the model package as one tar archive with its SHA-256, which the joiner checks before unpacking. The
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
from mdiexit.protocol.messages import Join, Member, Welcome
from mdiexit.security import Identity, NodeAuthenticator, make_client, make_server, read_public, read_secret

log = logging.getLogger("mdiexit.join")


class JoinError(RuntimeError):
    """Joining failed; the message says why and what to check."""


# ------------------------------------------------------------------ the source's side

def package_archive(folder: Path) -> tuple[bytes, str]:
    """The package's manifest and model files as a tar archive (no training artifacts), and its SHA-256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def cluster_view(cluster: ClusterConfig, public_keys: dict[str, bytes]) -> str:
    """The cluster file a joiner receives: every member's public key spelled out, the package beside it."""
    d = cluster_dict(cluster)
    d.update(package="package", keys_dir=None)
    for n in d["nodes"]:
        key = public_keys.get(n["name"])
        n["public_key"] = key.decode() if key is not None else n.get("public_key")
    return yaml.safe_dump(d, sort_keys=False)


def welcome_frames(sender: str, cluster: ClusterConfig, public_keys: dict[str, bytes],
                   archive: tuple[bytes, str]) -> list:
    data, digest = archive
    arr = np.frombuffer(data, np.uint8)
    msg = Welcome(sender=sender, cluster_yaml=cluster_view(cluster, public_keys), package_sha256=digest,
                  arrays=[describe("package", arr, "zstd")])
    return encode(msg, [arr])


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


def _receive_welcome(inbox: zmq.Socket, workdir: Path, timeout_s: float, source: str) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not inbox.poll(200):
            continue
        try:
            msg, arrays = decode(inbox.recv_multipart(copy=False), Limits(max_bytes=256 << 20))
        except ProtocolError as e:
            log.warning("dropped a bad message while joining (%s)", e)
            continue
        if isinstance(msg, Welcome):
            return unpack_welcome(msg, bytes(arrays[0]), workdir)
    raise JoinError(f"no answer from {source} within {timeout_s:.0f} s: is the source running, is the address "
                    "right, and did the operator allow this key (`mdiexit keys allow`)?")


def unpack_welcome(msg: Welcome, archive: bytes, workdir: Path) -> Path:
    digest = hashlib.sha256(archive).hexdigest()
    if digest != msg.package_sha256:
        raise JoinError(f"the model package arrived corrupted (SHA-256 {digest[:12]}, expected "
                        f"{msg.package_sha256[:12]}); try again")
    folder = workdir / "package"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise JoinError(f"the package archive holds an unexpected entry {member.name!r}")
        tar.extractall(folder, filter="data")
    path = workdir / "cluster.yaml"
    path.write_text(msg.cluster_yaml)
    return path
