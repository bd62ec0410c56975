"""proto3 JSON of the RLS messages for ``POST /json``, without protobuf's ``json_format`` on
the usual path (it walks every message by reflection: ~250 µs to parse a one-descriptor
request and ~190 µs to print its answer on the development VM, most of the endpoint's cost).

:func:`parse_request` reads the shape Envoy's users send (``domain``, ``hitsAddend``,
``descriptors`` of ``entries`` of ``key``/``value`` strings) straight into a message, and
hands anything else (other fields, duplicate names, strings for numbers, ...) to
``json_format.Parse``, so what is accepted and every error stay the same.
:func:`response_json` prints the set fields of a ``RateLimitResponse`` in field order, as
``json_format.MessageToJson(indent=None)`` does, and falls back to it for field types it
does not print itself (bytes, floats, Struct, maps).
"""

from __future__ import annotations

import json
from typing import Any, Final

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

__all__ = ["parse_request", "response_json"]

_MAX_UINT32: Final = 0xFFFFFFFF
_REQUEST_FIELDS: Final = frozenset({"domain", "descriptors", "hitsAddend", "hits_addend"})
_DESCRIPTOR_FIELDS: Final = frozenset({"entries"})
_ENTRY_FIELDS: Final = frozenset({"key", "value"})
_Entry = ratelimit_pb2.RateLimitDescriptor.Entry
_Descriptor = ratelimit_pb2.RateLimitDescriptor


class _UnusualShapeError(Exception):
    """Not the usual shape: let json_format decide."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _UnusualShapeError
    return found


def _fast_request(text: str) -> Any:
    data = json.loads(text, object_pairs_hook=_unique)
    if type(data) is not dict or not data.keys() <= _REQUEST_FIELDS:
        raise _UnusualShapeError
    if "hitsAddend" in data and "hits_addend" in data:
        raise _UnusualShapeError
    domain = data.get("domain", "")
    hits = data.get("hitsAddend", data.get("hits_addend", 0))
    given = data.get("descriptors", [])
    if type(domain) is not str or type(hits) is not int or type(given) is not list:
        raise _UnusualShapeError
    if not 0 <= hits <= _MAX_UINT32:
        raise _UnusualShapeError
    descriptors = []
    for descriptor in given:
        if type(descriptor) is not dict or not descriptor.keys() <= _DESCRIPTOR_FIELDS:
            raise _UnusualShapeError
        entries = descriptor.get("entries", [])
        if type(entries) is not list:
            raise _UnusualShapeError
        built = []
        for entry in entries:
            if type(entry) is not dict or not entry.keys() <= _ENTRY_FIELDS:
                raise _UnusualShapeError
            key, value = entry.get("key", ""), entry.get("value", "")
            if type(key) is not str or type(value) is not str:
                raise _UnusualShapeError
            built.append(_Entry(key=key, value=value))
        descriptors.append(_Descriptor(entries=built))
    return rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits, descriptors=descriptors)


def parse_request(text: str) -> Any:
    """The ``RateLimitRequest`` of proto3-JSON ``text``; raises ``json_format.ParseError``
    (or ``DecodeError``/``RecursionError``) exactly where ``json_format.Parse`` would."""
    try:
        return _fast_request(text)
    except (_UnusualShapeError, ValueError, RecursionError):
        request = rls_pb2.RateLimitRequest()
        json_format.Parse(text, request)
        return request


_INTEGERS_AS_STRINGS: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_PLAIN: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_STRING,
    }
)


def _value(field: Any, value: Any) -> Any:
    kind = field.type
    if kind in _PLAIN:
        return value
    if kind == FieldDescriptor.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if kind == FieldDescriptor.TYPE_MESSAGE:
        message_type = field.message_type
        if message_type.full_name == "google.protobuf.Duration":
            return value.ToJsonString()
        if message_type.file.package == "google.protobuf" or message_type.GetOptions().map_entry:
            raise _UnusualShapeError  # Struct, Any, wrappers, maps: json_format's own rules
        return _fields(value)
    if kind in _INTEGERS_AS_STRINGS:
        return str(value)
    raise _UnusualShapeError  # floats (NaN, Infinity), bytes (base64)


def _repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6; older ones have label
    if flag is not None:
        return bool(flag)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _fields(message: Any) -> dict[str, Any]:
    printed: dict[str, Any] = {}
    for field, value in message.ListFields():
        if _repeated(field):
            printed[field.json_name] = [_value(field, one) for one in value]
        else:
            printed[field.json_name] = _value(field, value)
    return printed


def response_json(response: Any) -> bytes:
    """``json_format.MessageToJson(response, indent=None)``, encoded, usually faster."""
    try:
        return json.dumps(_fields(response)).encode()
    except _UnusualShapeError:
        text: str = json_format.MessageToJson(response, indent=None)
        return text.encode()
