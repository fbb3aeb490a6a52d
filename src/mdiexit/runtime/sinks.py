"""Where a site's systems read the results: every offer's one outcome, as it is settled, also written to a sink
(`--sink jsonl:PATH`), one JSON object per line, appended and flushed, for a dashboard, Node-RED or a SCADA bridge
tailing the file:

    {"source": "source", "item": 41, "outcome": "result", "reason": "", "label": 3, "name": "Dress", "exit": 1,
     "confidence": 0.97, "latency_ms": 18.2, "at": 1796630400.12, "version": "mobilenetv2-ee-fashion-mnist@1a2b3c"}

`item` is what the stream knows the offer by: a video's frame index, a dataset's item index, a client's request id
(with `client`, the client's connection identity in hex).
A rejected or expired offer is a line too (its label -1, its reason said).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mdiexit.config import ConfigError
from mdiexit.runtime.arrivals import Arrivals, Offer
from mdiexit.runtime.ledger import Record

SINK_KINDS = ("jsonl",)


def check_sink(spec: str) -> Path:
    """The path of a `jsonl:PATH` sink; ConfigError naming the fix for anything else."""
    kind, _, where = spec.partition(":")
    if kind not in SINK_KINDS or not where:
        raise ConfigError(f"--sink {spec!r}: expected jsonl:PATH (one JSON line per result, appended)")
    path = Path(where)
    if not path.parent.is_dir():
        raise ConfigError(f"--sink {spec!r}: no folder {path.parent}; create it first")
    return path


class JsonlSink:
    def __init__(self, path: Path, source: str, classes: Sequence[str], version: str):
        self.file = path.open("a", buffering=1)  # line-buffered: a reader tailing the file sees each result
        self.source, self.classes, self.version = source, list(classes), version
        self.lines = 0

    def write(self, key: Any, outcome: str, reason: str, record: Record | None) -> None:
        done = record is not None and record.done_at is not None and outcome == "result"
        label = record.label if done else -1
        line = {"source": self.source, **_item(key), "outcome": outcome,
                "reason": reason, "label": label,
                "name": self.classes[label] if 0 <= label < len(self.classes) else None,
                "exit": record.exit if done else None, "confidence": record.confidence if done else None,
                "latency_ms": 1000 * (record.done_at - record.admitted_at) if done else None,
                "at": time.time(), "version": self.version}
        self.file.write(json.dumps(line) + "\n")
        self.lines += 1

    def close(self) -> None:
        self.file.close()


def _item(key: Any) -> dict:
    """What the stream knows an offer by: a frame or item index; a service's request id and its client (hex)."""
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], bytes):
        return {"item": key[1], "client": key[0].hex()}
    return {"item": key if isinstance(key, int | str) else str(key)}


class SinkedArrivals:
    """``arrivals`` whose every answer is also written to ``sink``."""

    def __init__(self, arrivals: Arrivals, sink: JsonlSink):
        self.arrivals, self.sink = arrivals, sink

    @property
    def done(self) -> bool:
        return self.arrivals.done

    def take(self, t: float) -> list[Offer]:
        return self.arrivals.take(t)

    def next_at(self, t: float) -> float:
        return self.arrivals.next_at(t)

    def answer(self, key: Any, outcome: str, reason: str, record: Record | None) -> None:
        self.arrivals.answer(key, outcome, reason, record)
        self.sink.write(key, outcome, reason, record)

    def stop_taking(self) -> list[Offer]:
        return self.arrivals.stop_taking()

    def shed(self, overloaded: bool) -> None:
        self.arrivals.shed(overloaded)
