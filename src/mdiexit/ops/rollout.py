"""`mdiexit rollout`: the operator's side of a roll-out (docs/guide/rollout.md). It sends the new package to the
running source, authenticated as an operator, and prints the roll-out's progress until it ends.

    mdiexit rollout --cluster F --package NEW [--steps 0.05,0.25,1.0] [--step-s 20] [--shadow 0.05] ...

Its key: ``--key FILE``; else the only key in KEYS_DIR/operators/, else the source's own (KEYS_DIR/SOURCE.key_secret);
for a one-machine `mdiexit run` on a cluster file without keys, the run's ephemeral keys in this user's runtime
folder. The source's reply reaches a CurveZMQ server here that admits the source's key alone."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from mdiexit.config import ClusterConfig, NodeConfig
from mdiexit.package import Package, PackageError, load_package, package_archive
from mdiexit.protocol.codec import Limits, ProtocolError, decode, encode
from mdiexit.protocol.messages import Progress, Rollout
from mdiexit.runtime.join import part_frames
from mdiexit.security import (
    OPERATOR_PREFIX,
    OPERATORS,
    Identity,
    NodeAuthenticator,
    make_client,
    make_server,
    read_public,
    read_secret,
    run_keys_dir,
)

SILENCE_S = 90.0  # the source says where the roll-out stands every second; this long without a word is an error
FIRST_WORD_S = 15.0  # the source answers a ROLLOUT at once: no answer within this long, and it is not there
OUTCOMES = ("completed", "rolled_back", "refused")  # a PROGRESS in one of these phases ends the roll-out


class RolloutError(Exception):
    """The roll-out could not be asked for or followed; the message says why and what to do."""


@dataclass
class OperatorKeys:
    """The operator's keypair, the source's public key, and the operator's name (its key file's)."""

    public: bytes
    secret: bytes
    source_public: bytes
    name: str


def find_keys(cluster: ClusterConfig, source: NodeConfig, key_file: Path | None, keys_dir: Path | None,
              insecure: bool) -> OperatorKeys | None:
    """The operator's keys for ``source`` (module docstring: where they are looked for); None on an insecure site.
    RolloutError names what is missing."""
    if insecure:
        return None
    if cluster.keyless(keys_dir):  # a one-machine run's ephemeral keys, in this user's runtime folder
        keys_dir = run_keys_dir(source.name, source.port)
        if keys_dir is None:
            raise RolloutError(f"no running one-machine run of source {source.name!r} (port {source.port}) keyed on "
                               "this machine by this user; start `mdiexit run` first, or pass --keys-dir / --key for "
                               "a keyed site (--insecure for an insecure one)")
    keys_dir = keys_dir or cluster.keys_dir
    if source.public_key:
        source_public = source.public_key.encode()
    elif keys_dir is not None and (keys_dir / f"{source.name}.key").exists():
        source_public = read_public(keys_dir / f"{source.name}.key")
    else:
        raise RolloutError(f"no public key for source {source.name!r}: set public_key in the cluster file, or pass "
                           "--keys-dir with its .key file")
    if key_file is None and keys_dir is not None:
        operators = sorted((keys_dir / OPERATORS).glob("*.key_secret")) if (keys_dir / OPERATORS).is_dir() else []
        if len(operators) > 1:
            raise RolloutError(f"several operator keys in {keys_dir / OPERATORS}; name yours with --key")
        key_file = operators[0] if operators else keys_dir / f"{source.name}.key_secret"
    if key_file is None or not key_file.exists():
        raise RolloutError("no operator key: pass --key FILE (a key in KEYS_DIR/operators/, made with `mdiexit keys "
                           "operator`, or the source's own key_secret)")
    public, secret = read_secret(key_file)
    return OperatorKeys(public, secret, source_public, key_file.stem)


def reply_host_for(source_host: str) -> str:
    """The address of this machine that the source reaches it at: the one its packets to the source leave from."""
    if source_host in ("127.0.0.1", "localhost"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((source_host, 9))  # no packet is sent: this only picks the route
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def check_package(package: Path) -> Package:
    """The package to roll out, checked here first (RolloutError: why it cannot be)."""
    try:
        return load_package(package, check_onnx=True)
    except PackageError as e:
        raise RolloutError(f"--package {package}: {e}") from None


def rollout(source: NodeConfig, package: Path, request: dict, keys: OperatorKeys | None,
            reply_host: str | None = None, out=sys.stdout,
            on_progress: Callable[[Progress], None] | None = None) -> tuple[str, Progress | None]:
    """Ask the source for a roll-out of ``package`` and follow it (each PROGRESS printed, and handed to
    ``on_progress``). Returns (its outcome, the last PROGRESS)."""
    pkg = check_package(package)
    archive = package_archive(package)
    ctx = zmq.Context()
    auth = None
    inbox, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)
    push.setsockopt(zmq.LINGER, 2000)
    inbox.setsockopt(zmq.LINGER, 0)
    refused = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    try:
        sender = "operator"  # an insecure cluster: nobody is authenticated
        if keys is not None:
            ident = Identity(keys.name, keys.public, keys.secret, {"source": keys.source_public})
            auth = NodeAuthenticator(ctx, {"source": keys.source_public})  # the source's replies, nobody else's
            auth.begin()
            make_server(inbox, ident)
            make_client(push, ident, "source")
            sender = source.name if keys.public == keys.source_public else OPERATOR_PREFIX + keys.name
        host = reply_host or reply_host_for(source.host)
        port = inbox.bind_to_random_port("tcp://127.0.0.1" if host == "127.0.0.1" else "tcp://*")
        parts = part_frames(sender, archive)
        msg = Rollout(sender=sender, package_sha256=archive[1], package_bytes=len(archive[0]), parts=len(parts),
                      reply_host=host, reply_port=port, **request)
        push.connect(source.address)
        push.send_multipart(encode(msg))
        for frames in parts:
            push.send_multipart(frames)
        print(f"rolling {pkg.version} out at {source.name} ({source.address}): {len(archive[0]) / 1e6:.1f} MB",
              file=out, flush=True)
        return follow(inbox, refused, out, on_progress)
    finally:
        push.disable_monitor()
        refused.close(linger=0)
        push.close()
        inbox.close()
        if auth is not None:
            auth.stop()
        ctx.term()


def follow(inbox: zmq.Socket, refused: zmq.Socket, out,
           on_progress: Callable[[Progress], None] | None = None) -> tuple[str, Progress | None]:
    """Print the source's PROGRESS until the roll-out ends."""
    began, heard = time.monotonic(), None
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    poller.register(refused, zmq.POLLIN)
    while time.monotonic() - (heard or began) < (SILENCE_S if heard else FIRST_WORD_S):
        ready = dict(poller.poll(500))
        if refused in ready:
            raise RolloutError("the source refused this key: a roll-out needs the source's own key or one in its "
                               "KEYS_DIR/operators/ (`mdiexit keys operator`)")
        if inbox not in ready:
            continue
        try:
            msg, _ = decode(inbox.recv_multipart(copy=False), Limits(max_bytes=1 << 20))
        except ProtocolError:
            continue
        if not isinstance(msg, Progress):
            continue
        heard = time.monotonic()
        print(f"  [{msg.phase}] {msg.text}", file=out, flush=True)
        if on_progress is not None:
            on_progress(msg)
        if msg.phase in OUTCOMES:
            return msg.phase, msg
    if heard is None:
        raise RolloutError(f"no answer from the source within {FIRST_WORD_S:g} s: is `mdiexit run` or `mdiexit serve` "
                           "running there, and does it reach this machine (--reply-host)?")
    raise RolloutError(f"no word from the source for {SILENCE_S:g} s: is it still running? (`mdiexit status`)")
