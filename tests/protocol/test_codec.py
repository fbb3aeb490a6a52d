import json

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdiexit.package import load_package
from mdiexit.protocol import (
    KIND_DATA,
    PROTOCOL_VERSION,
    ArrayMeta,
    Control,
    Data,
    Limits,
    ProtocolError,
    Result,
    State,
    check_arrays,
    decode,
    describe,
    encode,
)
from mdiexit.protocol.codec import named


def data_msg(arrays, **kw):
    base = dict(item_id=7, task=2, hops=1, admitted_at=12.5, thresholds_version=3, thresholds=[0.9, 0.8, 0.0],
                sender="w1", backlog_s=0.02, timings=[("src", 1, 0.004)])
    base.update(kw)
    return Data(arrays=[describe(f"a{i}", a) for i, a in enumerate(arrays)], **base)


ARRAYS = [
    np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4),
    np.arange(10, dtype=np.uint8).reshape(1, 10),
    np.array([[1.5, -2.0]], dtype=np.float16),
    np.array([[1, 2, 3]], dtype=np.int64),
    np.zeros((1, 0, 5), dtype=np.float32),
    np.array(3.0, dtype=np.float64),
]


def as_bytes(frames):
    return [bytes(f) for f in frames]


def test_data_round_trip_many_dtypes():
    msg = data_msg(ARRAYS)
    frames = encode(msg, ARRAYS)
    assert len(frames) == 1 + len(ARRAYS)
    got, arrays = decode(as_bytes(frames))
    assert got == msg and isinstance(got, Data)
    for a, b in zip(ARRAYS, arrays, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_encode_and_decode_are_zero_copy():
    x = np.random.default_rng(0).normal(size=(1, 8, 4, 4)).astype(np.float32)
    frames = encode(data_msg([x]), [x])
    assert isinstance(frames[1], memoryview)
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), x)  # encode did not copy
    wire = as_bytes(frames)
    _, (y,) = decode(wire)
    assert np.shares_memory(y, np.frombuffer(wire[1], np.uint8))  # decode did not copy
    _, (z,) = decode(frames)
    assert np.shares_memory(z, x)


def test_non_contiguous_array_is_copied_once():
    x = np.arange(32, dtype=np.float32).reshape(1, 4, 8)[:, :, ::2]
    frames = encode(data_msg([x]), [x])
    _, (y,) = decode(as_bytes(frames))
    np.testing.assert_array_equal(x, y)


def test_zmq_frame_like_objects():
    class FakeFrame:
        def __init__(self, b):
            self.buffer = memoryview(b)

    x = np.ones((1, 3), np.float32)
    _, (y,) = decode([FakeFrame(bytes(f)) for f in encode(data_msg([x]), [x])])
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("msg", [
    Result(item_id=1, label=4, exit=2, confidence=0.97, sender="w2", backlog_s=0.1, admitted_at=3.25,
           timings=[("src", 1, 0.01), ("w2", 2, 0.02)]),
    State(sender="w3", backlog_s=0.5, queue_len=4, service_s={1: 0.01, 2: 0.03}, sent_at=99.0),
    State(sender="w3", backlog_s=0.5, queue_len=4, sent_at=99.0, ack=(123456, 0.002, 98.5, 0.01), run_s=3.5,
          links={"w1": (2e7, 0.004, 5000), "src": (0.0, 0.001, 12)}),
    Control(sender="src", action="shutdown"),
])
def test_round_trip_other_messages(msg):
    frames = encode(msg)
    assert len(frames) == 1
    got, arrays = decode(as_bytes(frames))
    assert got == msg and type(got) is type(msg) and arrays == []


def test_header_is_a_msgpack_map_with_kind_and_version():
    head = msgpack.unpackb(encode(data_msg([]))[0])
    assert head["kind"] == KIND_DATA and head["version"] == PROTOCOL_VERSION and head["item_id"] == 7


def test_encode_rejects_mismatched_arrays():
    x = np.ones((1, 2), np.float32)
    with pytest.raises(ProtocolError):
        encode(data_msg([x]), [])
    with pytest.raises(ProtocolError):
        encode(data_msg([x]), [x.astype(np.float64)])
    with pytest.raises(ProtocolError):
        encode(Data(**{**_fields(data_msg([])), "arrays": [ArrayMeta(name="x", dtype="float32", shape=[1, 2],
                                                                      codec="gzip")]}), [x])


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_lossless_codecs_round_trip_and_shrink_redundant_arrays(codec):
    x = np.zeros((1, 64, 7, 7), np.float32)
    x[0, :8] = np.arange(8 * 49, dtype=np.float32).reshape(8, 7, 7)
    msg = Data(**{**_fields(data_msg([])), "arrays": [ArrayMeta(name="x", dtype="float32", shape=list(x.shape),
                                                                 codec=codec)]})
    frames = encode(msg, [x])
    assert len(frames[1]) < x.nbytes / 4
    got, arrays = decode(frames)
    assert np.array_equal(arrays[0], x)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_lossless_codec_garbage_and_size_bombs_rejected(codec):
    x = np.zeros((1, 6), np.float32)
    meta = ArrayMeta(name="x", dtype="float32", shape=[1, 6], codec=codec)
    msg = Data(**{**_fields(data_msg([])), "arrays": [meta]})
    header = encode(msg, [x])[0]
    for frame in (b"\x00garbage" * 3, encode(Data(**{**_fields(msg), "arrays": [
            ArrayMeta(name="x", dtype="float32", shape=[1, 600], codec=codec)]}), [np.zeros((1, 600), np.float32)])[1]):
        with pytest.raises(ProtocolError, match=codec):
            decode([header, bytes(frame)])


def _fields(msg):
    import msgspec

    return msgspec.structs.asdict(msg)


def _header(frames):
    return msgpack.unpackb(bytes(frames[0]))


def _with(frames, **changes):
    h = _header(frames)
    for k, v in changes.items():
        if v is _DELETE:
            h.pop(k)
        else:
            h[k] = v
    return [msgpack.packb(h, use_bin_type=True), *as_bytes(frames[1:])]


_DELETE = object()
X = np.arange(6, dtype=np.float32).reshape(1, 6)
GOOD = as_bytes(encode(data_msg([X]), [X]))


@pytest.mark.parametrize("frames, words", [
    ([], "no header"),
    (GOOD[:1], "array frames"),
    (GOOD + [b"extra"], "array frames"),
    ([GOOD[0], GOOD[1][:-1]], "needs 24 bytes"),
    (_with(GOOD, version=2), "version"),
    (_with(GOOD, kind=b"Z"), "kind"),
    (_with(GOOD, kind="D"), "kind"),
    (_with(GOOD, item_id=_DELETE), "item_id"),
    (_with(GOOD, item_id="seven"), "item_id"),
    (_with(GOOD, item_id=-1), "item_id"),
    (_with(GOOD, task=0), "task"),
    (_with(GOOD, thresholds=[1.5]), "thresholds"),
    (_with(GOOD, arrays=[{"name": "x", "dtype": "object", "shape": [1, 6], "codec": "raw"}]), "dtype"),
    (_with(GOOD, arrays=[{"name": "x", "dtype": "float32", "shape": [1, -6], "codec": "raw"}]), "shape"),
    (_with(GOOD, arrays=[{"name": "x", "dtype": "float32", "shape": [2**40, 2**20], "codec": "raw"}]),
     "exceeds"),
    (_with(GOOD, arrays=[{"name": "x", "dtype": "float32", "shape": [1, 6], "codec": "zstd"}]), "zstd"),
    (_with(GOOD, arrays=[{"name": "x", "dtype": "float32", "shape": [1, 6], "codec": "gzip"}]), "codec"),
    ([msgpack.packb([1, 2, 3])], "map"),
    ([b"\x81\xa4kind"], "header"),
    ([b""], "map"),
    ([msgpack.packb({"kind": b"C", "version": 1, "sender": "s", "action": "rate"})], "action"),
    ([msgpack.packb({"kind": b"S", "version": 1, "sender": "s", "backlog_s": float("nan"), "queue_len": 0,
                     "sent_at": 0.0})], "backlog_s"),
    ([msgpack.packb({"kind": b"S", "version": 1, "sender": "s", "backlog_s": 0.0, "queue_len": 0, "sent_at": 0.0,
                     "ack": [-5, 0.0, 1.0, 0.0]})], "ack"),
    ([msgpack.packb({"kind": b"S", "version": 1, "sender": "s", "backlog_s": 0.0, "queue_len": 0, "sent_at": 0.0,
                     "ack": [5, 0.0, 1.0]})], "ack"),
    ([msgpack.packb({"kind": b"S", "version": 1, "sender": "s", "backlog_s": 0.0, "queue_len": 0, "sent_at": 0.0,
                     "links": {"w1": [-1.0, 0.0, 0]}})], "links"),
    ("not frames", "list of frames"),
    ([object()], "not a buffer"),
])
def test_bad_messages_raise_protocol_error(frames, words):
    with pytest.raises(ProtocolError, match=words):
        decode(frames)


def test_limits():
    with pytest.raises(ProtocolError, match="too large"):
        decode(GOOD, Limits(max_bytes=100))
    with pytest.raises(ProtocolError, match="too many frames"):
        decode([GOOD[0]] + [b""] * 20, Limits(max_arrays=4))
    with pytest.raises(ProtocolError, match="header too large"):
        decode(GOOD, Limits(max_header_bytes=10))


# ------------------------------------------------------------------ fuzzing: only ProtocolError, ever

def _mangle_header(h: dict, key: str, value) -> list[bytes]:
    h = dict(h)
    h[key] = value
    return [msgpack.packb(h, use_bin_type=True), *GOOD[1:]]


WIRE_INTS = st.integers(-2**63, 2**64 - 1)  # what msgpack can encode
json_like = st.recursive(
    st.none() | st.booleans() | WIRE_INTS | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda kids: (st.lists(kids, max_size=4)
                  | st.dictionaries(st.text(max_size=6) | WIRE_INTS, kids, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_random_bytes_only_raise_protocol_error(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(_header(GOOD)) + ["extra"]), value=json_like)
def test_mangled_fields_only_raise_protocol_error(key, value):
    try:
        decode(_mangle_header(_header(GOOD), key, value))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(GOOD[0])), extra=st.lists(st.binary(max_size=32), max_size=3),
       drop_body=st.booleans())
def test_truncated_and_extra_frames_only_raise_protocol_error(cut, extra, drop_body):
    frames = [GOOD[0][:cut]] + ([] if drop_body else GOOD[1:]) + extra
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(dtype=st.text(max_size=10) | st.sampled_from(["float32", "uint8", "float64", "object", "<f4", "U4"]),
       shape=st.lists(st.integers(-2**63, 2**64 - 1), max_size=10),
       codec=st.sampled_from(["raw", "lz4", "zstd", "", "RAW"]),
       body=st.binary(max_size=64))
def test_mangled_array_meta_only_raises_protocol_error(dtype, shape, codec, body):
    h = _header(GOOD)
    h["arrays"] = [{"name": "x", "dtype": dtype, "shape": shape, "codec": codec}]
    try:
        _, arrays = decode([msgpack.packb(h, use_bin_type=True), body])
    except ProtocolError:
        return
    assert arrays[0].nbytes == len(body)


# ------------------------------------------------------------------ against the manifest

@pytest.fixture
def package(tmp_path):
    tasks = [
        {"index": 1, "file": "t1.onnx", "macs": 100, "input_shape": [1, 4, 4], "features_shape": [8, 2, 2],
         "temperature": 1.0},
        {"index": 2, "file": "t2.onnx", "macs": 100, "input_shape": [8, 2, 2], "features_shape": [16],
         "temperature": 1.0},
        {"index": 3, "file": "t3.onnx", "macs": 100, "input_shape": [16], "features_shape": [10],
         "temperature": 1.0},
    ]
    for f in ("t1.onnx", "t2.onnx", "t3.onnx", "e.onnx", "d.onnx"):
        (tmp_path / f).write_bytes(b"")
    manifest = {
        "format": "mdiexit-model/1", "name": "tiny", "classes": [str(i) for i in range(10)],
        "input": {"shape": [1, 4, 4], "dtype": "uint8"}, "tasks": tasks, "full_macs": 300,
        "default_thresholds": [0.9, 0.9, 0.0],
        "exit_profile": {"thresholds": [0.5], "per_exit": [{"exit_fraction": [0.5], "accuracy": [0.9]}] * 3,
                         "frontier": [{"thresholds": [0.5, 0.5, 0.0], "accuracy": 0.9,
                                       "compute_fraction": 0.5}]},
        "compression": [{"after_task": 2, "ratio": 4, "encoder": "e.onnx", "decoder": "d.onnx",
                         "features_shape": [16],
                         "outputs": [{"name": "code", "shape": [4], "dtype": "uint8"},
                                     {"name": "scale", "shape": [1], "dtype": "float32"}]}],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return load_package(tmp_path)


def _data(task, arrays, thresholds=(0.9, 0.9, 0.0)):
    metas, arrs = named(arrays)
    msg = Data(item_id=1, task=task, admitted_at=0.0, thresholds=list(thresholds), sender="s", arrays=metas)
    return decode(as_bytes(encode(msg, arrs)))


def test_check_arrays_accepts_manifest_shapes(package):
    check_arrays(*_data(1, {"x": np.zeros((1, 1, 4, 4), np.uint8)}), package)
    check_arrays(*_data(2, {"x": np.zeros((1, 8, 2, 2), np.float32)}), package)
    check_arrays(*_data(3, {"x": np.zeros((1, 16), np.float32)}), package)
    coded = {"code": np.zeros((1, 4), np.uint8), "scale": np.zeros((1, 1), np.float32)}
    check_arrays(*_data(3, coded), package)
    msg = Result(item_id=1, label=3, exit=3, confidence=0.5, sender="w", admitted_at=0.0)
    check_arrays(msg, [], package)


@pytest.mark.parametrize("task, arrays, words", [
    (1, {"x": np.zeros((1, 1, 4, 4), np.float32)}, "uint8"),
    (2, {"x": np.zeros((1, 8, 2, 3), np.float32)}, "expects"),
    (2, {"x": np.zeros((2, 8, 2, 2), np.float32)}, "expects"),
    (2, {"x": np.zeros((8, 2, 2), np.float32)}, "expects"),
    (4, {"x": np.zeros((1, 10), np.float32)}, "task"),
    (3, {"code": np.zeros((1, 4), np.uint8)}, "code"),
    (3, {"code": np.zeros((1, 5), np.uint8), "scale": np.zeros((1, 1), np.float32)}, "expects"),
    (2, {"a": np.zeros((1, 8, 2, 2), np.float32), "b": np.zeros((1,), np.float32)}, "takes"),
])
def test_check_arrays_rejects(package, task, arrays, words):
    with pytest.raises(ProtocolError, match=words):
        check_arrays(*_data(task, arrays), package)


def test_check_arrays_thresholds_and_exit(package):
    with pytest.raises(ProtocolError, match="thresholds"):
        check_arrays(*_data(2, {"x": np.zeros((1, 8, 2, 2), np.float32)}, thresholds=(0.5, 0.0)), package)
    bad = Result(item_id=1, label=3, exit=5, confidence=0.5, sender="w", admitted_at=0.0)
    with pytest.raises(ProtocolError, match="exit"):
        check_arrays(bad, [], package)


def test_a_request_is_told_from_its_header_alone():
    from mdiexit.protocol.codec import Peek, peek
    from mdiexit.protocol.messages import Hello, Request

    frames = encode(Request(request_id=77, sent_at=12.5, arrays=[describe("x", np.zeros((1, 1, 28, 28), np.uint8))]),
                    [np.zeros((1, 1, 28, 28), np.uint8)])
    assert peek(frames[0]) == Peek(Request.KIND, 77, 12.5)
    assert peek(encode(Hello())[0]) == Peek(Hello.KIND, 0, None)
    assert peek(b"\xc1garbage") == Peek()
    assert peek(msgpack.packb({"kind": Request.KIND, "request_id": -5})) == Peek(Request.KIND)
    assert peek(msgpack.packb({"kind": Request.KIND, "request_id": 3, "sent_at": float("nan")})) == Peek(Request.KIND)
