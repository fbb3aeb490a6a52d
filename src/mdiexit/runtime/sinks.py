"""Where a site's systems read the results: every offer's one outcome, as it is settled, also goes to a sink
(`--sink`, or `sink:` on the source's entry in the cluster file), one JSON object each:

    {"source": "source", "item": 41, "outcome": "result", "reason": "", "label": 3, "name": "Dress", "exit": 1,
     "confidence": 0.97, "latency_ms": 18.2, "at": 1796630400.12, "version": "mobilenetv2-ee-fashion-mnist@1a2b3c"}

- `jsonl:PATH`: appended to PATH, one line each, flushed, for a dashboard or a bridge tailing the file;
- `mqtt://[USER@]HOST[:PORT]/TOPIC` (`mqtts://` for TLS): published to TOPIC at QoS 1 (paho-mqtt, the `mqtt`
  extra), the lingua franca of Node-RED and SCADA bridges. The password is read from MDIEXIT_MQTT_PASSWORD and a
  private CA from MDIEXIT_MQTT_CA (TLS otherwise checks the system's CAs); neither is ever on the command line.

`item` is what the stream knows the offer by: a video's frame index, a dataset's item index, a client's request id
(with `client`, the client's connection identity in hex). A rejected or expired offer is a message too (its label
-1, its reason said).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from mdiexit.config import ConfigError
from mdiexit.runtime.arrivals import Arrivals, Offer
from mdiexit.runtime.ledger import Record

log = logging.getLogger("mdiexit.sink")
SINK_FORMS = "jsonl:PATH or mqtt://[USER@]HOST[:PORT]/TOPIC (mqtts:// for TLS)"
MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CLOSE_TIMEOUT_S = 10.0  # at the end of a run, how long the broker has to acknowledge what is still unacknowledged


@dataclass(frozen=True)
class SinkSpec:
    kind: str  # jsonl | mqtt
    path: Path | None = None  # jsonl
    host: str = ""  # mqtt: the broker
    port: int = 0
    topic: str = ""
    user: str | None = None
    tls: bool = False
    text: str = ""  # as given, for messages
    origin: str = "--sink"  # where it was given: the option, or the cluster file's source entry


def check_sink(spec: str, origin: str = "--sink") -> SinkSpec:
    """What ``spec`` names (given at ``origin``); a ConfigError naming the fix for anything else."""
    if spec.startswith(("mqtt://", "mqtts://")):
        return _check_mqtt(spec, origin)
    kind, _, where = spec.partition(":")
    if kind != "jsonl" or not where:
        raise ConfigError(f"{origin} {spec!r}: expected {SINK_FORMS}")
    path = Path(where)
    if not path.parent.is_dir():
        raise ConfigError(f"{origin} {spec!r}: no folder {path.parent}; create it first")
    return SinkSpec("jsonl", path=path, text=spec, origin=origin)


def _check_mqtt(spec: str, origin: str) -> SinkSpec:
    scheme, _, rest = spec.partition("://")
    netloc, _, topic = rest.partition("/")  # by hand: a URL parser takes a topic's "#" for a fragment
    url = urlsplit(f"{scheme}://{netloc}")
    try:
        port = url.port or MQTT_PORTS[url.scheme]
    except ValueError:
        raise ConfigError(f"{origin} {spec!r}: the port is not a number; expected {SINK_FORMS}") from None
    if not url.hostname or not topic or any(c in topic for c in "+#"):
        raise ConfigError(f"{origin} {spec!r}: expected {SINK_FORMS}, a topic without wildcards")
    if url.password is not None:
        raise ConfigError(f"{origin} {spec!r}: no password in the address (it would show in the process list and "
                          "the files); set MDIEXIT_MQTT_PASSWORD")
    if importlib.util.find_spec("paho") is None:
        raise ConfigError(f"{origin} {spec!r}: MQTT needs paho-mqtt; install it with pip install 'mdiexit[mqtt]'")
    return SinkSpec("mqtt", host=url.hostname, port=port, topic=topic, user=url.username,
                    tls=url.scheme == "mqtts", text=spec, origin=origin)


def result_message(source: str, classes: Sequence[str], version: str, key: Any, outcome: str, reason: str,
                   record: Record | None) -> dict:
    """The one message a sink receives for an offer's outcome (its fields: the module's docstring)."""
    done = record is not None and record.done_at is not None and outcome == "result"
    label = record.label if done else -1
    return {"source": source, **_item(key), "outcome": outcome, "reason": reason, "label": label,
            "name": classes[label] if 0 <= label < len(classes) else None,
            "exit": record.exit if done else None, "confidence": record.confidence if done else None,
            "latency_ms": 1000 * (record.done_at - record.admitted_at) if done else None,
            "at": time.time(), "version": version}


def _item(key: Any) -> dict:
    """What the stream knows an offer by: a frame or item index; a service's request id and its client (hex)."""
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], bytes):
        return {"item": key[1], "client": key[0].hex()}
    return {"item": key if isinstance(key, int | str) else str(key)}


class Sink(Protocol):
    def write(self, message: dict) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    def __init__(self, path: Path):
        self.file = path.open("a", buffering=1)  # line-buffered: a reader tailing the file sees each result

    def write(self, message: dict) -> None:
        self.file.write(json.dumps(message) + "\n")

    def close(self) -> None:
        self.file.close()


class MqttSink:
    """Publishes each message to the broker at QoS 1. paho's own thread talks to the broker, and reconnects: a
    broker that goes away for a while gets the messages queued meanwhile when it is back."""

    def __init__(self, spec: SinkSpec, client_id: str):
        import paho.mqtt.client as mqtt

        self.spec = spec
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.max_queued_messages_set(0)  # unbounded while the broker is away: nothing is dropped here
        self.client.reconnect_delay_set(1, 30)
        if spec.user is not None:
            self.client.username_pw_set(spec.user, os.environ.get("MDIEXIT_MQTT_PASSWORD"))
        if spec.tls:
            self.client.tls_set(ca_certs=os.environ.get("MDIEXIT_MQTT_CA"))
        elif spec.host not in LOOPBACK:
            log.warning("results go to the MQTT broker %s:%d unencrypted; use mqtts:// for TLS", spec.host, spec.port)
        try:
            self.client.connect(spec.host, spec.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{spec.origin} {spec.text!r}: cannot reach the MQTT broker at {spec.host}:{spec.port} "
                              f"({e}); start it, or fix the address") from None
        self.client.loop_start()
        self.unacknowledged: deque = deque()  # what the broker has not acknowledged yet, oldest first

    def write(self, message: dict) -> None:
        self.unacknowledged.append(self.client.publish(self.spec.topic, json.dumps(message), qos=1))
        while self.unacknowledged and self.unacknowledged[0].is_published():
            self.unacknowledged.popleft()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for info in self.unacknowledged:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except RuntimeError:  # the connection is down: what is unsent stays unsent
                break
        if left := sum(not info.is_published() for info in self.unacknowledged):
            log.warning("%d results were not acknowledged by the MQTT broker %s:%d within %g s", left,
                        self.spec.host, self.spec.port, timeout_s)
        self.client.disconnect()
        self.client.loop_stop()


def open_sink(spec: SinkSpec, source: str) -> Sink:
    if spec.kind == "mqtt":
        return MqttSink(spec, f"mdiexit-{source}-{os.getpid()}")
    return JsonlSink(spec.path)


class SinkedArrivals:
    """``arrivals`` whose every answer is also written to ``sink``."""

    def __init__(self, arrivals: Arrivals, sink: Sink, source: str, classes: Sequence[str], version: str):
        self.arrivals, self.sink = arrivals, sink
        self.source, self.classes, self.version = source, list(classes), version

    @property
    def done(self) -> bool:
        return self.arrivals.done

    def take(self, t: float) -> list[Offer]:
        return self.arrivals.take(t)

    def next_at(self, t: float) -> float:
        return self.arrivals.next_at(t)

    def answer(self, key: Any, outcome: str, reason: str, record: Record | None) -> None:
        self.arrivals.answer(key, outcome, reason, record)
        self.sink.write(result_message(self.source, self.classes, self.version, key, outcome, reason, record))

    def stop_taking(self) -> list[Offer]:
        return self.arrivals.stop_taking()

    def shed(self, overloaded: bool) -> None:
        self.arrivals.shed(overloaded)
