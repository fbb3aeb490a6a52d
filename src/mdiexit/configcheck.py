"""Checking a parsed file against typed, constrained dataclasses with msgspec, with errors that name the field:

    convert({"nodes": [{"slowdown": "fast", ...}]}, ClusterConfig)
    # ConfigError: nodes[0].slowdown: expected a number >= 1, got 'fast'

What a field expects is read from its declaration (type, ``msgspec.Meta`` bounds, pattern ``description``), so
the messages follow the declarations. ``__post_init__`` checks raise ``ValueError("field: what is wrong")``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import inspect as mi

_MISSING = object()
_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>.*)`$", re.S)
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


class ConfigError(Exception):
    """The cluster file is invalid. The message names the field."""


def one_of(values: Iterable[str]) -> Any:
    """The type of a field that takes one of ``values`` (said in this order in errors)."""
    values = tuple(values)
    return Annotated[Literal[values], msgspec.Meta(description="one of " + ", ".join(values))]


def describe_value(v: Any) -> str:
    return f"{v!r:.60}"


def reject_unknown(d: dict, allowed: list[str], where: str) -> None:
    """Unknown keys are typos: name the first one and the allowed keys."""
    extra = sorted(str(k) for k in d if k not in allowed)
    if extra:
        raise ConfigError(f"{where}{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


def convert(data: Any, typ: Any, where: str = "", expected: str | None = None) -> Any:
    """``data`` as ``typ`` (strictly: no str -> number, no bool -> number). ``where`` prefixes the field path in
    errors, and ``expected`` replaces the description of ``typ`` itself."""
    try:
        return msgspec.convert(data, typ, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:
        raise ConfigError(_message(str(e), data, typ, where, expected)) from None


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Path:
        if isinstance(obj, str | Path) and str(obj):
            return Path(obj)
        raise ValueError("not a path")
    raise NotImplementedError(typ)


def _message(error: str, data: Any, typ: Any, where: str, expected: str | None) -> str:
    m = _AT.match(error)
    msg, path = (m["msg"], m["path"]) if m else (error, "")
    tokens: list[str | int] = [name if name else int(idx) for name, idx in _TOKEN.findall(path)]
    at = _info_at(mi.type_info(typ), tokens)
    missing = re.match(r"Object missing required field `(.+)`$", msg)
    if missing:
        return f"{_join(where, [*tokens, missing[1]])}: missing"
    if isinstance(_unwrap(at), mi.DataclassType) and not msg.startswith(("Expected", "Invalid")):
        return f"{_join(where, tokens)}{'.' if where or tokens else ''}{msg}"  # a __post_init__ check: "field: ..."
    value = _value_at(data, tokens)
    want = expected if expected is not None and not tokens else describe_type(at)
    got = "" if value is _MISSING else f", got {describe_value(value)}"
    return f"{_join(where, tokens)}: expected {want}{got}"


def _join(where: str, tokens: list[str | int]) -> str:
    out = where
    for t in tokens:
        out += f"[{t}]" if isinstance(t, int) else (f".{t}" if out else t)
    return out


def _value_at(data: Any, tokens: list[str | int]) -> Any:
    for t in tokens:
        try:
            data = data[t]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _unwrap(t: mi.Type) -> mi.Type:
    """The type to walk into: past metadata, and past `| None`."""
    while True:
        if isinstance(t, mi.Metadata):
            t = t.type
        elif isinstance(t, mi.UnionType):
            inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
            if len(inner) != 1:
                return t
            t = inner[0]
        else:
            return t


def _info_at(t: mi.Type, tokens: list[str | int]) -> mi.Type:
    for tok in tokens:
        u = _unwrap(t)
        if isinstance(tok, str) and isinstance(u, mi.DataclassType | mi.StructType):
            t = next((f.type for f in u.fields if f.name == tok), mi.AnyType())
        elif isinstance(tok, int) and hasattr(u, "item_type"):
            t = u.item_type
        elif isinstance(tok, int) and isinstance(u, mi.TupleType) and tok < len(u.item_types):
            t = u.item_types[tok]
        else:
            return mi.AnyType()
    return t


def describe_type(t: mi.Type) -> str:
    """What a field of this type accepts, in words: 'a number >= 1', 'an integer in 1..65535', 'one of a, b'."""
    if isinstance(t, mi.Metadata):
        desc = (t.extra_json_schema or {}).get("description")
        return desc if desc else describe_type(t.type)
    if isinstance(t, mi.UnionType):
        inner = [x for x in t.types if not isinstance(x, mi.NoneType)]
        text = " or ".join(describe_type(x) for x in inner)
        return text + (" (or null)" if len(inner) < len(t.types) else "")
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.IntType):
        if t.ge is not None and t.le is not None:
            return f"an integer in {t.ge}..{t.le}"
        return "an integer" + _bounds(t)
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(map(str, t.values))  # sorted: declare with one_of() to keep the order
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.CustomType) and t.cls is Path:
        return "a path"
    if isinstance(t, mi.TupleType):
        return f"a list of {len(t.item_types)} values"
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType):
        return "a non-empty list" if t.min_length else "a list"
    if isinstance(t, mi.DictType | mi.DataclassType | mi.StructType):
        return "a mapping"
    return "a valid value"


def _bounds(t: mi.FloatType | mi.IntType) -> str:
    parts = [f"{op} {v:g}" for op, v in ((">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt)) if v is not None]
    return " " + " and ".join(parts) if parts else ""
