"""Near-miss suggestions for error messages: ``(did you mean 'policies'?)``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]


def closest(name: object, choices: Iterable[str]) -> str | None:
    """The choice ``name`` was most likely meant to be, if one is close enough."""
    if not isinstance(name, str):
        return None
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.7)
    if not found:  # a different case is a near miss difflib scores low ('Limit' for 'limit')
        found = [choice for choice in choices if choice.lower() == name.lower()][:1]
    return found[0] if found else None


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""`` if none is close."""
    match = closest(name, choices)
    return f" (did you mean {match!r}?)" if match is not None else ""
