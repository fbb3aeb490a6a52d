"""Encode and decode protocol messages as multipart frames (DESIGN §6), validating everything.

    frames = encode(Data(...), [x])          # [header bytes, memoryview(x)]: zero-copy
    msg, arrays = decode(frames, Limits())   # arrays are np.frombuffer views of the frames
    check_arrays(msg, arrays, package)       # shapes/dtypes against the model manifest

``decode`` raises only :class:`ProtocolError`, whatever bytes arrive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from mdiexit.protocol.messages import (
    BY_KIND,
    KIND_NAMES,
    MAX_NDIM,
    PROTOCOL_VERSION,
    ArrayMeta,
    Data,
    Message,
    Part,
)

if TYPE_CHECKING:
    from mdiexit.package import Package

# Wire dtypes: always little-endian. Names are numpy's canonical names.
DTYPES: dict[str, np.dtype] = {n: np.dtype(n).newbyteorder("<") for n in (
    "bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64")}
CODECS = ("raw", "lz4", "zstd")  # lossless codecs of array frames, selectable per link

Frame = Any  # bytes | bytearray | memoryview | zmq.Frame (anything with .buffer or the buffer protocol)


class ProtocolError(ValueError):
    """A message is malformed or violates a limit. The message says what and where."""


@dataclass(frozen=True)
class Limits:
    """Size limits applied by :func:`decode`."""

    max_bytes: int = 64 * 1024 * 1024  # all frames together
    max_header_bytes: int = 64 * 1024
    max_arrays: int = 16
    max_ndim: int = MAX_NDIM


class _Envelope(msgspec.Struct):
    """The first thing read from a header: which message and which version (other keys are skipped)."""

    kind: bytes
    version: int


_ENVELOPE = msgspec.msgpack.Decoder(_Envelope)


class Peek(msgspec.Struct, frozen=True):
    """A client request's kind, id and send time, read from its header alone (other keys skipped, arrays
    untouched): what a service needs to refuse a request at the door."""

    kind: bytes = b""
    request_id: int = 0
    sent_at: float | None = None


_PEEK = msgspec.msgpack.Decoder(Peek)
_UNREADABLE = Peek()


def peek(header: Frame) -> Peek:
    """The Peek of a message's header frame, as cheaply as msgpack allows; an empty one when the header cannot be
    read (the full decode then says why)."""
    try:
        head = _PEEK.decode(_as_view(header, 0))
    except Exception:  # anything at all: the caller decodes the message in full and answers the error
        return _UNREADABLE
    if not 0 <= head.request_id < 2**62 or (head.sent_at is not None and not math.isfinite(head.sent_at)):
        return Peek(head.kind)
    return head
_DECODERS = {k: msgspec.msgpack.Decoder(cls) for k, cls in BY_KIND.items()}
_ENCODER = msgspec.msgpack.Encoder()


# ------------------------------------------------------------------ encode

def describe(name: str, arr: np.ndarray, codec: str = "raw") -> ArrayMeta:
    """The ArrayMeta of ``arr`` under ``name``."""
    return ArrayMeta(name=name, dtype=_wire_name(arr.dtype), shape=list(arr.shape), codec=codec)


def _wire_dtype(dt: np.dtype) -> np.dtype:
    return _wire(dt)[0]


def _wire_name(dt: np.dtype) -> str:
    return _wire(dt)[1]


def _wire(dt: np.dtype) -> tuple[np.dtype, str]:
    """The wire dtype of ``dt`` and its name. Every message asks this of each array (numpy computes a dtype's name
    in Python each time it is read): the answer is looked up once per dtype."""
    wire = _WIRE_OF.get(dt)
    if wire is None:
        name = np.dtype(dt).newbyteorder("=").name
        if name not in DTYPES:
            raise ProtocolError(f"dtype {dt} cannot be sent; allowed: {sorted(DTYPES)}")
        wire = _WIRE_OF[dt] = (DTYPES[name], name)
    return wire


_WIRE_OF: dict[np.dtype, tuple[np.dtype, str]] = {}


def _buffer(arr: np.ndarray) -> memoryview:
    """A byte memoryview of ``arr`` in wire layout; copies only if it is not C-contiguous little-endian."""
    wire = _wire_dtype(arr.dtype)
    if arr.dtype != wire or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=wire)
    return memoryview(arr.reshape(-1).view(np.uint8))


def encode(msg: Message, arrays: Sequence[np.ndarray] = ()) -> list[bytes | memoryview]:
    """Frames of ``msg``: frame 0 is the msgpack header, frames 1.. the raw buffers of ``arrays``.

    ``arrays`` must match the message's ``arrays`` metadata (DATA, WELCOME) in count, dtype and shape; other
    message types carry no arrays. Raises ProtocolError on a mismatch (a sender bug).
    """
    kind = type(msg).KIND
    metas: list[ArrayMeta] = list(getattr(msg, "arrays", ()))
    if len(metas) != len(arrays):
        raise ProtocolError(f"{KIND_NAMES[kind]}: header describes {len(metas)} arrays, {len(arrays)} given")
    for i, (meta, arr) in enumerate(zip(metas, arrays, strict=True)):
        if meta.codec not in CODECS:
            raise ProtocolError(f"arrays[{i}].codec: {meta.codec!r} is not implemented (use 'raw')")
        if meta.dtype != _wire_name(arr.dtype) or tuple(meta.shape) != arr.shape:
            raise ProtocolError(f"arrays[{i}] ({meta.name}): header says {meta.dtype}{list(meta.shape)}, "
                                f"array is {arr.dtype}{list(arr.shape)}")
    header = {"kind": kind, **msgspec.structs.asdict(msg)}
    header["version"] = msg.version
    return [_ENCODER.encode(header), *(_pack(meta.codec, _buffer(np.asarray(a))) for meta, a in zip(metas, arrays,
                                                                                                   strict=True))]


def _pack(codec: str, buf: memoryview) -> memoryview | bytes:
    if codec == "lz4":
        import lz4.block

        return lz4.block.compress(buf, store_size=False)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(buf)
    return buf


def _unpack(codec: str, buf: memoryview, nbytes: int, where: str) -> memoryview | bytes:
    """Decompress one frame to exactly `nbytes` (the size its shape implies), never more."""
    if codec == "lz4":
        import lz4.block

        try:
            out = lz4.block.decompress(buf, uncompressed_size=nbytes)
        except Exception as e:  # lz4 raises LZ4BlockError on garbage
            raise ProtocolError(f"{where}: lz4 frame does not decode ({e})") from None
    elif codec == "zstd":
        import zstandard

        try:
            size = zstandard.frame_content_size(buf)
            if size != nbytes:
                raise ProtocolError(f"{where}: zstd frame holds {size} bytes, the shape needs {nbytes}")
            out = zstandard.ZstdDecompressor().decompress(buf, max_output_size=nbytes)
        except zstandard.ZstdError as e:
            raise ProtocolError(f"{where}: zstd frame does not decode ({e})") from None
    else:
        return buf
    if len(out) != nbytes:
        raise ProtocolError(f"{where}: {codec} frame decodes to {len(out)} bytes, the shape needs {nbytes}")
    return out


# ------------------------------------------------------------------ decode

def _as_view(frame: Frame, i: int) -> memoryview:
    buf = getattr(frame, "buffer", frame)
    try:
        mv = memoryview(buf)
    except TypeError:
        raise ProtocolError(f"frame {i}: not a buffer ({type(frame).__name__})") from None
    if not mv.c_contiguous:
        raise ProtocolError(f"frame {i}: buffer is not contiguous")
    if mv.format != "B" or mv.ndim != 1:
        try:
            mv = mv.cast("B")
        except (TypeError, ValueError):
            raise ProtocolError(f"frame {i}: cannot read buffer as bytes") from None
    return mv


def decode(frames: Sequence[Frame], limits: Limits | None = None) -> tuple[Message, list[np.ndarray]]:
    """Parse and validate one multipart message. Returns the typed message and its arrays (read-only
    zero-copy views when the frames are immutable). Raises ProtocolError, and nothing else, on any fault."""
    try:
        return _decode(frames, limits or Limits())
    except ProtocolError:
        raise
    except Exception as e:  # last line of defence: a bad message must never kill a node
        raise ProtocolError(f"malformed message ({type(e).__name__}: {e})") from None


def _decode(frames: Sequence[Frame], limits: Limits) -> tuple[Message, list[np.ndarray]]:
    if isinstance(frames, bytes | bytearray | memoryview | str) or not isinstance(frames, Sequence):
        raise ProtocolError(f"expected a list of frames, got {type(frames).__name__}")
    if not frames:
        raise ProtocolError("empty message: no header frame")
    if len(frames) > limits.max_arrays + 1:
        raise ProtocolError(f"too many frames: {len(frames)} > {limits.max_arrays + 1}")
    views = [_as_view(f, i) for i, f in enumerate(frames)]
    total = sum(v.nbytes for v in views)
    if total > limits.max_bytes:
        raise ProtocolError(f"message too large: {total} bytes > {limits.max_bytes}")
    head = views[0]
    if head.nbytes > limits.max_header_bytes:
        raise ProtocolError(f"header too large: {head.nbytes} bytes > {limits.max_header_bytes}")
    if head.nbytes == 0 or not 0x80 <= head[0] <= 0x8F and head[0] not in (0xDE, 0xDF):
        raise ProtocolError("header: not a msgpack map")
    try:
        env = _ENVELOPE.decode(head)
    except (msgspec.MsgspecError, ValueError) as e:  # msgspec raises UnicodeDecodeError for bad UTF-8
        raise ProtocolError(f"header: {e}") from None
    if env.version != PROTOCOL_VERSION:
        raise ProtocolError(f"header.version: unsupported protocol version {env.version} "
                            f"(this node speaks {PROTOCOL_VERSION})")
    if env.kind not in _DECODERS:
        raise ProtocolError(f"header.kind: unknown message kind {env.kind!r:.20}")
    name = KIND_NAMES[env.kind]
    try:
        msg: Message = _DECODERS[env.kind].decode(head)
    except (msgspec.MsgspecError, ValueError) as e:
        raise ProtocolError(f"{name} header: {e}") from None
    metas = list(getattr(msg, "arrays", ()))
    if len(metas) > limits.max_arrays:
        raise ProtocolError(f"{name}.arrays: {len(metas)} arrays > limit {limits.max_arrays}")
    if len(views) - 1 != len(metas):
        raise ProtocolError(f"{name}: header describes {len(metas)} arrays but "
                            f"{len(views) - 1} array frames came")
    return msg, [_array(meta, v, i, limits) for i, (meta, v) in enumerate(zip(metas, views[1:], strict=True))]


def _array(meta: ArrayMeta, buf: memoryview, i: int, limits: Limits) -> np.ndarray:
    where = f"arrays[{i}] ({meta.name!r})"
    if meta.codec not in CODECS:
        raise ProtocolError(f"{where}.codec: {meta.codec!r} is not supported here (only {list(CODECS)})")
    dt = DTYPES.get(meta.dtype)
    if dt is None:
        raise ProtocolError(f"{where}.dtype: {meta.dtype!r:.20} not one of {sorted(DTYPES)}")
    if len(meta.shape) > limits.max_ndim:
        raise ProtocolError(f"{where}.shape: {len(meta.shape)} dimensions > limit {limits.max_ndim}")
    n = dt.itemsize
    for d in meta.shape:  # Python ints: no overflow; stop as soon as the size is absurd
        n *= d
        if n > limits.max_bytes:
            raise ProtocolError(f"{where}.shape: {list(meta.shape)} of {meta.dtype} exceeds "
                                f"{limits.max_bytes} bytes")
    buf = _unpack(meta.codec, buf, n, where)
    if n != len(memoryview(buf)):
        raise ProtocolError(f"{where}: shape {list(meta.shape)} of {meta.dtype} needs {n} bytes, "
                            f"frame has {len(memoryview(buf))}")
    return np.frombuffer(buf, dtype=dt).reshape(meta.shape)


# ------------------------------------------------------------------ manifest check

def check_arrays(msg: Message, arrays: Sequence[np.ndarray], package: Package, batch: int = 1) -> None:
    """Check a decoded message against the model package (DESIGN §6: "shape and dtype against the manifest").

    DATA needing task k carries task k's input, with a leading batch dimension of ``batch``:
    either one uint8 (k = 1) or float32 (k > 1) array of shape (batch, *input_shape), or, when the
    package compresses after task k-1, the encoder's outputs by name (shape (batch, *output.shape)).
    Its thresholds must have one entry per task. RESULT's exit must name a task. Raises ProtocolError.
    """
    k_max = package.num_tasks
    if isinstance(msg, Part):  # a package archive's bytes: one uint8 array, checked whole against its SHA-256
        if len(arrays) != 1 or arrays[0].dtype != np.uint8 or arrays[0].ndim != 1:
            raise ProtocolError("PART: expected one uint8 array of the archive's bytes")
        return
    if not isinstance(msg, Data):
        exit_ = getattr(msg, "exit", None)
        if exit_ is not None and not 1 <= exit_ <= k_max:
            raise ProtocolError(f"RESULT.exit: {exit_} is not a task of this model (1..{k_max})")
        ths = getattr(msg, "thresholds", None)
        if ths is not None and len(ths) != k_max:
            raise ProtocolError(f"CONTROL.thresholds: expected {k_max} values, got {len(ths)}")
        if arrays:
            raise ProtocolError(f"{KIND_NAMES[type(msg).KIND]}: carries no arrays, got {len(arrays)}")
        return
    k = msg.task
    if not 1 <= k <= k_max:
        raise ProtocolError(f"DATA.task: {k} is not a task of this model (1..{k_max})")
    if len(msg.thresholds) != k_max:
        raise ProtocolError(f"DATA.thresholds: expected {k_max} values, got {len(msg.thresholds)}")
    spec = package.task(k)
    raw_dtype = "uint8" if k == 1 else "float32"
    raw = {"x": ((batch, *spec.input_shape), raw_dtype)}
    comp = package.compression_after(k - 1) if k > 1 else None
    coded = {o.name: ((batch, *o.shape), o.dtype) for o in comp.outputs} if comp else None
    names = [m.name for m in msg.arrays]
    if len(arrays) != len(names):
        raise ProtocolError(f"DATA: header describes {len(names)} arrays, {len(arrays)} given")
    if coded is not None and set(names) == set(coded) and len(names) == len(coded):
        expected = coded
    elif len(arrays) == 1:
        expected = {names[0]: raw["x"]}
    else:
        want = f"one {raw_dtype} array" + (f" or the code arrays {sorted(coded)}" if coded else "")
        raise ProtocolError(f"DATA.arrays: task {k} takes {want}, got {names}")
    for name, arr in zip(names, arrays, strict=True):
        shape, dtype = expected[name]
        if arr.dtype != np.dtype(dtype) or tuple(arr.shape) != shape:
            raise ProtocolError(f"DATA.arrays[{name!r}]: task {k} expects {dtype}{list(shape)}, "
                                f"got {arr.dtype}{list(arr.shape)}")


def named(arrays: Mapping[str, np.ndarray]) -> tuple[list[ArrayMeta], list[np.ndarray]]:
    """Metadata and arrays for a DATA message from a name -> array mapping (insertion order)."""
    arrs = [np.asarray(a) for a in arrays.values()]
    return [describe(n, a) for n, a in zip(arrays, arrs, strict=True)], arrs
