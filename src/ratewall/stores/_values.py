"""How the Redis store writes a key's state (the Python side of ``lua/_prelude.lua``).

Integers are written in base 93, with the printable ASCII characters ``!`` to ``~`` except
``:``. A value is a letter naming the algorithm (``F`` fixed window, ``S`` sliding window,
``T`` token bucket, ``G`` GCRA), the state's time field in exactly 8 digits (a µs time needs 8
until the year 2147), then its other integers separated by ``:``. A fixed window's value is
10 bytes for counts under 93 and 12 under 804,357: small enough for Redis to keep it inside
its object header, which holds a typical key under 100 bytes of server memory. Sliding logs
are lists of ``time:cost:running total`` entries in the same digits.

The scripts do all the writing; this module is for tests and tools that read or seed keys.
"""

from __future__ import annotations

__all__ = ["decode_int", "decode_value", "encode_int", "encode_value"]

_BASE = 93
_DIGITS = "".join(chr(code) for code in range(33, 127) if chr(code) != ":")
_VALUES = {char: digit for digit, char in enumerate(_DIGITS)}
# The index of each algorithm's time field in its state tuple.
_TIME_FIELD = {"F": 1, "S": 2, "T": 1, "G": 0}


def encode_int(number: int) -> str:
    if number < 0:
        raise ValueError(f"stored integers are never negative, got {number}")
    digits = []
    while True:
        number, digit = divmod(number, _BASE)
        digits.append(_DIGITS[digit])
        if number == 0:
            return "".join(reversed(digits))


def decode_int(text: str) -> int:
    number = 0
    for char in text:
        number = number * _BASE + _VALUES[char]
    return number


def encode_value(tag: str, state: tuple[int, ...]) -> bytes:
    field = _TIME_FIELD[tag]
    time = encode_int(state[field]).rjust(8, _DIGITS[0])
    if len(time) > 8:
        raise ValueError("a time beyond the year 2147 cannot be stored")
    others = ":".join(encode_int(n) for i, n in enumerate(state) if i != field)
    return (tag + time + others).encode("ascii")


def decode_value(raw: bytes) -> tuple[str, tuple[int, ...]]:
    """``(tag, state)`` of a stored string value."""
    text = raw.decode("ascii")
    tag = text[0]
    state = [decode_int(part) for part in text[9:].split(":")]
    state.insert(_TIME_FIELD[tag], decode_int(text[1:9]))
    return tag, tuple(state)
