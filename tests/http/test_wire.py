"""What may go on the wire: nothing a server would send as something else."""

from __future__ import annotations

import pytest

from ratewall.http.wire import encode_headers


def test_encode_headers_refuses_what_cannot_go_on_the_wire() -> None:
    assert encode_headers([("RateLimit", '"a";r=1;t=2')]) == [(b"ratelimit", b'"a";r=1;t=2')]
    for bad in [("X", "caf\u00e9\u2603"), ("X", "a\r\nSet-Cookie: x=1"), ("", "x"), ("A B", "x")]:
        with pytest.raises(ValueError):  # noqa: PT011 - UnicodeEncodeError or our own
            encode_headers([bad])
