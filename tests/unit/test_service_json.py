"""``POST /json``'s own proto3-JSON reading and printing give exactly what protobuf's
``json_format`` gives, on the usual shapes and on every shape it hands back to it."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format

from ratewall.service._json import parse_request, response_json

Response = rls_pb2.RateLimitResponse

BODIES = [
    # The usual shapes: read without json_format.
    '{"domain": "rl", "descriptors": [{"entries": [{"key": "user", "value": "ann"}]}]}',
    '{"domain": "rl", "hitsAddend": 3, "descriptors": [{"entries": [{"key": "a"}]}, {}]}',
    '{"hits_addend": 0, "domain": "rl", "descriptors": []}',
    '{"domain": "d\\u00e9j\\u00e0", "descriptors": [{"entries": [{"value": "v", "key": "k"}]}]}',
    "{}",
    # Everything else: json_format's answer or its error.
    '{"domain": "rl", "hitsAddend": "7", "descriptors": []}',
    '{"domain": "rl", "hitsAddend": 3.0}',
    '{"domain": "rl", "hitsAddend": -1}',
    '{"domain": "rl", "hitsAddend": 4294967296}',
    '{"domain": "rl", "hitsAddend": true}',
    '{"domain": "rl", "hitsAddend": 1, "hits_addend": 2}',
    '{"domain": "rl", "domain": "other"}',
    '{"domain": null}',
    '{"domain": 5}',
    '{"domain": "rl", "unknown": 1}',
    '{"domain": "rl", "descriptors": {"entries": []}}',
    '{"domain": "rl", "descriptors": [{"entries": [{"key": 1}]}]}',
    '{"domain": "rl", "descriptors": [{"entries": [{"key": "k"}], "hitsAddend": 2}]}',
    '{"domain": "rl", "descriptors": [{"entries": [], "limit": {"requestsPerUnit": 5, '
    '"unit": "MINUTE"}}]}',
    '{"domain": "rl", "descriptors": [{"entries": [{"key": "k", "value": "v", "x": 1}]}]}',
    '{"domain": "rl", "descriptors": [null]}',
    "[]",
    "not json",
    '{"domain": "rl"',
]


def _outcome(parse: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", parse(text)
    except Exception as error:  # compared: type and text
        return type(error).__name__, str(error)


def _reference(text: str) -> Any:
    request = rls_pb2.RateLimitRequest()
    json_format.Parse(text, request)
    return request


@pytest.mark.parametrize("body", BODIES)
def test_requests_read_as_json_format_reads_them(body: str) -> None:
    assert _outcome(parse_request, body) == _outcome(_reference, body)


def _responses() -> list[Any]:
    empty = Response()
    ok = Response(overall_code=Response.Code.Value("OK"))
    status = ok.statuses.add(code=Response.Code.Value("OK"))
    status.current_limit.requests_per_unit = 5
    status.current_limit.unit = Response.RateLimit.Unit.Value("MINUTE")
    status.current_limit.name = "per_user"
    status.limit_remaining = 4
    status.duration_until_reset.FromNanoseconds(1_500_000_000)
    ok.statuses.add(code=Response.Code.Value("OK"), limit_remaining=0xFFFFFFFF)
    ok.statuses.add(code=Response.Code.Value("OK"))
    over = Response(overall_code=Response.Code.Value("OVER_LIMIT"))
    refused = over.statuses.add(code=Response.Code.Value("OVER_LIMIT"))
    refused.current_limit.requests_per_unit = 0
    refused.duration_until_reset.FromNanoseconds(0)
    over.response_headers_to_add.append(base_pb2.HeaderValue(key="retry-after", value="60"))
    over.response_headers_to_add.append(
        base_pb2.HeaderValue(key="ratelimit", value='"per_user";r=0;t=60')
    )
    odd = Response(overall_code=7)  # an enum number without a name
    odd.statuses.add(code=2).duration_until_reset.FromNanoseconds(1)
    raw = Response(overall_code=Response.Code.Value("OK"), raw_body=b"\x00\xffbytes")
    metadata = Response(overall_code=Response.Code.Value("OK"))
    metadata.dynamic_metadata.update({"a": 1.5, "b": [True, None, "x"]})
    return [empty, ok, over, odd, raw, metadata]


@pytest.mark.parametrize("response", _responses())
def test_responses_print_as_json_format_prints_them(response: Any) -> None:
    assert response_json(response) == json_format.MessageToJson(response, indent=None).encode()
