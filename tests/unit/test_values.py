"""The stored-value digits (ratewall.stores._values, the twin of lua/_prelude.lua)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ratewall.stores._values import decode_int, decode_value, encode_int, encode_value


@given(st.integers(0, 2**53))
def test_integers_round_trip_without_the_separator(number: int) -> None:
    text = encode_int(number)
    assert ":" not in text
    assert text.isascii()
    assert text.isprintable()
    assert " " not in text
    assert decode_int(text) == number


def test_a_microsecond_time_takes_eight_characters_until_2147() -> None:
    assert len(encode_int(1_800_000_000_000_000)) == 8
    assert len(encode_int(93**8 - 1)) == 8  # 93**8 µs after 1970 is in the year 2147


SIZES = {"F": 2, "S": 3, "T": 2, "G": 2}


@given(st.sampled_from("FSTG"), st.data())
def test_values_round_trip(tag: str, data: st.DataObject) -> None:
    state = tuple(
        data.draw(st.lists(st.integers(0, 93**8 - 1), min_size=SIZES[tag], max_size=SIZES[tag]))
    )
    assert decode_value(encode_value(tag, state)) == (tag, state)


def test_a_fixed_window_value_is_ten_to_twelve_bytes() -> None:
    assert len(encode_value("F", (5, 1_764_000_000_000_000))) == 10
    assert len(encode_value("F", (804_356, 1_764_000_000_000_000))) == 12
