"""Wire protocol (DESIGN §6): message types, encode/decode and validation. No sockets."""

from mdiexit.protocol.codec import Limits, ProtocolError, check_arrays, decode, describe, encode
from mdiexit.protocol.messages import (
    KIND_CONTROL,
    KIND_DATA,
    KIND_RESULT,
    KIND_STATE,
    PROTOCOL_VERSION,
    ArrayMeta,
    Control,
    Data,
    Message,
    Result,
    State,
)

__all__ = [
    "KIND_CONTROL", "KIND_DATA", "KIND_RESULT", "KIND_STATE", "PROTOCOL_VERSION", "ArrayMeta", "Control",
    "Data",
    "Limits", "Message", "ProtocolError", "Result", "State", "check_arrays", "decode", "describe", "encode",
]
