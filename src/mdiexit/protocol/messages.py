"""Message types of the wire protocol (DESIGN §6).

Each message travels as a ZeroMQ multipart message: frame 0 is a msgpack map holding ``kind`` (one byte,
as msgpack bin), ``version`` and the fields below; DATA's array buffers follow as frames 1.., described
by its ``arrays`` list. Field constraints (non-negative counts, finite times, thresholds in [0, 1],
bounded lengths) are declared on the types, so decoding validates them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

PROTOCOL_VERSION = 1

KIND_DATA = b"D"
KIND_RESULT = b"R"
KIND_STATE = b"S"
KIND_CONTROL = b"C"

# why a well-formed message was refused: no cluster key, a sender other than the key's node (or CONTROL not from
# the source), a RESULT for no item in flight or from a node that does not hold its exit's task
REJECT_REASONS = ("unauthenticated", "impersonation", "unexpected_result")

MAX_NAME = 64  # node and array names
MAX_TASKS = 64  # thresholds, service-time entries
MAX_TIMINGS = 256  # per-hop timing entries
MAX_NDIM = 8

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
TaskIndex = Annotated[int, msgspec.Meta(ge=1, le=MAX_TASKS)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]  # durations: finite, non-negative
Time = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]  # clock readings: finite
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Dim = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Codec = Literal["raw", "lz4", "zstd"]
Timing = tuple[Name, TaskIndex, Seconds]  # (node, task, seconds)


class ArrayMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Description of one array frame: its name (e.g. "x", or an encoder output), dtype, shape and codec."""

    name: Name
    dtype: Annotated[str, msgspec.Meta(max_length=16)]
    shape: Annotated[list[Dim], msgspec.Meta(max_length=MAX_NDIM)]
    codec: Codec = "raw"


class Data(msgspec.Struct, frozen=True, kw_only=True):
    """DATA: one item on its way to its next task. ``thresholds`` are those the item was admitted with."""

    KIND: ClassVar[bytes] = KIND_DATA

    item_id: Count
    attempt: Count = 0  # the source's dispatch number of this item: a re-dispatch increments it (DESIGN §9)
    task: TaskIndex  # next task to run, 1-based
    hops: Count = 0
    admitted_at: Time
    thresholds_version: Count = 0
    thresholds: Annotated[list[Unit], msgspec.Meta(max_length=MAX_TASKS)]
    sender: Name
    backlog_s: Seconds = 0.0
    arrays: Annotated[list[ArrayMeta], msgspec.Meta(max_length=MAX_TASKS)] = []
    timings: Annotated[list[Timing], msgspec.Meta(max_length=MAX_TIMINGS)] = []
    version: int = PROTOCOL_VERSION


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """RESULT: the final answer for one item, sent to the source."""

    KIND: ClassVar[bytes] = KIND_RESULT

    item_id: Count
    attempt: Count = 0
    label: Count
    exit: TaskIndex  # 1-based
    confidence: Unit
    sender: Name
    backlog_s: Seconds = 0.0
    admitted_at: Time
    timings: Annotated[list[Timing], msgspec.Meta(max_length=MAX_TIMINGS)] = []
    version: int = PROTOCOL_VERSION


class State(msgspec.Struct, frozen=True, kw_only=True):
    """STATE: a node's heartbeat to its neighbours (backlog, queue length, service-time estimates)."""

    KIND: ClassVar[bytes] = KIND_STATE

    sender: Name
    backlog_s: Seconds
    queue_len: Count
    service_s: Annotated[dict[TaskIndex, Seconds], msgspec.Meta(max_length=MAX_TASKS)] = {}
    sent_at: Time
    leaving: bool = False  # a graceful leave: route nothing more here
    # counters for the run summary (tasks_run_K, busy_s, bytes_sent, bad_messages, ...)
    stats: Annotated[dict[Name, Time], msgspec.Meta(max_length=MAX_TASKS)] = {}
    version: int = PROTOCOL_VERSION


class Control(msgspec.Struct, frozen=True, kw_only=True):
    """CONTROL, accepted only from the source: shutdown. (Thresholds travel with each item, not here.)"""

    KIND: ClassVar[bytes] = KIND_CONTROL

    sender: Name
    action: Literal["shutdown"]
    version: int = PROTOCOL_VERSION


Message = Data | Result | State | Control

BY_KIND: dict[bytes, type[Data] | type[Result] | type[State] | type[Control]] = {
    KIND_DATA: Data, KIND_RESULT: Result, KIND_STATE: State, KIND_CONTROL: Control,
}
KIND_NAMES = {KIND_DATA: "DATA", KIND_RESULT: "RESULT", KIND_STATE: "STATE", KIND_CONTROL: "CONTROL"}
