"""The client endpoint during a roll-out (runtime.service): a request may name either version the source holds, or
one retired since; any other version gets an error reply naming the one served; each result names its version."""

from __future__ import annotations

import dataclasses

import numpy as np
import zmq

from mdiexit.package import load_package
from mdiexit.protocol.codec import decode, describe, encode
from mdiexit.protocol.messages import Hello, Info, Reply, Request
from mdiexit.runtime.ledger import Record
from mdiexit.runtime.ports import free_ports
from mdiexit.runtime.service import ClientEndpoint


def test_requests_naming_a_held_or_retired_version_are_taken_and_others_refused(tiny_package):
    pkg = load_package(tiny_package)
    other = dataclasses.replace(pkg, classes=[f"other-{c}" for c in pkg.classes])
    held = {"m@old": pkg, "m@new": other}
    ctx = zmq.Context()
    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    endpoint = ClientEndpoint(ctx, address, pkg, None, lambda: None, held.get, lambda: "m@new")
    endpoint.start()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(address)
    try:
        client.send_multipart(encode(Hello()))
        assert client.poll(5000)
        info, _ = decode(client.recv_multipart())
        assert isinstance(info, Info) and info.package == "m@new"  # the version a new client is told
        x = np.zeros((1, *pkg.input_shape), np.uint8)
        for rid, version in enumerate(("m@old", "m@new", None, "m@gone")):
            client.send_multipart(encode(Request(request_id=rid, package=version, arrays=[describe("x", x)]), [x]))
        assert client.poll(5000)
        error, _ = decode(client.recv_multipart())
        assert isinstance(error, Reply) and error.request_id == 3 and error.outcome == "error"
        assert "m@gone" in error.reason and "serving m@new" in error.reason
        taken = []
        while len(taken) < 3:
            taken += endpoint.take(0.0)
        assert sorted(o.key[1] for o in taken) == [0, 1, 2]
        record = Record(0.0, -1, label=2, exit=3, confidence=0.9, done_at=0.05, package="m@new")
        endpoint.answer(taken[0].key, "result", "", record)
        assert client.poll(5000)
        reply, _ = decode(client.recv_multipart())
        assert reply.package == "m@new" and reply.name == other.classes[2]  # that version's class names
    finally:
        client.close()
        endpoint.close()
        ctx.term()
