"""Only cluster members talk (CurveZMQ + ZAP), a sender is who its key says, and the wire carries ciphertext."""

from __future__ import annotations

import gzip
import os
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from mdiexit.config import load_cluster
from mdiexit.package import load_package
from mdiexit.protocol.codec import describe, encode
from mdiexit.protocol.messages import Control, Data, Join, Result, State
from mdiexit.runtime.launch import LiveRun, RunOptions, run_cluster
from mdiexit.security import create_keys, read_public, read_secret
from tests.runtime.conftest import write_cluster
from tests.runtime.test_recovery import wait_for

pytestmark = pytest.mark.cluster


def forged_messages(pkg, sender: str) -> list[list]:
    x = np.zeros((1, *pkg.tasks[0].input_shape), np.uint8)
    data = [Data(item_id=10**9 + i, task=1, admitted_at=0.0, thresholds=pkg.default_thresholds, sender=sender,
                 arrays=[describe("x", x)]) for i in range(20)]
    results = [Result(item_id=i, label=0, exit=1, confidence=1.0, sender=sender, admitted_at=0.0) for i in range(50)]
    state = State(sender=sender, backlog_s=0.0, queue_len=0, sent_at=0.0)
    return [encode(m, [x]) for m in data] + [encode(m) for m in results] + \
        [encode(state), encode(Control(sender="source", action="shutdown"))]


def attack(ctx, address: str, frames: list[list], keys: tuple[bytes, bytes, bytes] | None) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 0)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys
    sock.connect(address)
    for f in frames:
        try:
            sock.send_multipart(f)
        except zmq.Again:
            break  # a refused handshake: nothing can be sent
    return sock


def test_outsiders_and_impostors_are_refused(tmp_path, tiny_package):
    keys = tmp_path / "keys"
    create_keys(["source", "w1", "w2"], keys)
    cluster_path = write_cluster(tmp_path / "c.yaml", tiny_package, [30, 30, 30], keys_dir=str(keys))
    cluster = load_cluster(cluster_path)
    pkg = load_package(tiny_package)
    stranger_pub, stranger_sec = zmq.curve_keypair()
    w2_pub, w2_sec = read_secret(keys / "w2.key_secret")
    socks = []

    def action(live: LiveRun):
        ctx = zmq.Context.instance()
        wait_for(lambda: live.source.ledger.completed >= 20, what="20 results")
        for node in cluster.nodes:
            server = read_public(keys / f"{node.name}.key")
            socks.append(attack(ctx, node.address, forged_messages(pkg, "source"), None))  # no keys at all
            socks.append(attack(ctx, node.address, forged_messages(pkg, "source"),
                                (stranger_pub, stranger_sec, server)))  # a key the cluster does not know
        w1 = cluster.node("w1")
        impostor = [encode(Control(sender="source", action="shutdown")),  # w2's key, claiming to be the source
                    encode(Control(sender="w2", action="shutdown")),  # honest sender, but not the source
                    # honest, but only the source takes these: a worker's role refuses them
                    encode(Result(item_id=0, label=1, exit=1, confidence=0.9, sender="w2", admitted_at=0.0)),
                    encode(Join(sender="w2", name="w2", host="127.0.0.1", port=6000))]
        socks.append(attack(ctx, w1.address, impostor, (w2_pub, w2_sec, read_public(keys / "w1.key"))))
        wait_for(lambda: live.source.phase == "done", timeout=120, what="the end of the run")

    s = run_cluster(cluster_path, RunOptions(rate=40, duration_s=5, warmup_s=0.5, live=False),
                    on_ready=action).summary
    for sock in socks:
        sock.close(0)
    assert s["secure"] and s["crashed"] == []
    assert s["completed"] == s["admitted"] and s["lost"] == 0 and s["duplicates"] == 0
    assert s["unknown_results"] == 0  # nothing forged got in
    assert s["rejected_messages"]["unexpected_result"] == 1  # w2's RESULT, sent to w1
    assert s["rejected_messages"]["unauthenticated"] >= len(cluster.nodes)
    assert s["rejected_messages"]["impersonation"] == 3  # two CONTROLs not from the source, and w2's JOIN to w1
    assert set(s["per_node"]) == {"source", "w1", "w2"}  # every node ran to the end and reported


# ------------------------------------------------------------------ the wire carries ciphertext

PATTERN = bytes((i * 37 + 11) % 251 for i in range(64))


def pattern_dataset(root, src_dir) -> None:
    """Fashion-MNIST's train split, and a test split whose every image starts with PATTERN."""
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        src = next(p for p in (src_dir / name, src_dir / f"{name}.gz") if p.exists())
        os.symlink(src, root / src.name)
    n = 64
    images = np.zeros((n, 28, 28), np.uint8)
    images.reshape(n, -1)[:, :64] = np.frombuffer(PATTERN, np.uint8)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + bytes(i % 10 for i in range(n)))


def capture_loopback(stop: threading.Event, out: bytearray) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind(("lo", 0))
    s.settimeout(0.05)
    while not stop.is_set():
        try:
            out += s.recv(65536)
        except TimeoutError:
            pass
    s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="capturing loopback packets (AF_PACKET) needs root")
@pytest.mark.parametrize("insecure", [False, True], ids=["curve", "insecure"])
def test_wire_carries_ciphertext(tmp_path, tiny_package, insecure):
    from mdiexit.data import FASHION_MNIST_DIR

    data = tmp_path / "data"
    pattern_dataset(data, Path(os.environ.get("MDIEXIT_DATA") or FASHION_MNIST_DIR))
    cluster = write_cluster(tmp_path / "c.yaml", tiny_package, [10, 10, 10], mode="ddi")  # raw items travel
    stop, captured = threading.Event(), bytearray()
    t = threading.Thread(target=capture_loopback, args=(stop, captured))
    t.start()
    try:
        s = run_cluster(cluster, RunOptions(rate=40, duration_s=2, warmup_s=0.2, live=False, data_dir=data,
                                            insecure=insecure)).summary
    finally:
        stop.set()
        t.join(5)
    assert s["completed"] == s["admitted"] > 0 and s["secure"] == (not insecure)
    assert (PATTERN in captured) == insecure
