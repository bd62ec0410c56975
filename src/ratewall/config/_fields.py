"""What every part of the config parse shares: how a value is described in an error, how a
field path is written and sorted, near-miss suggestions, and :class:`Problems`, which
gathers every error of a file so that one run reports them all."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from .._suggest import closest, did_you_mean
from ..errors import ConfigError

__all__ = [
    "MAX_REPORTED",
    "Problems",
    "closest",
    "did_you_mean",
    "dotted_path",
    "duplicate_key",
    "field_order",
    "kind_of",
    "unknown_fields",
]

T = TypeVar("T")

#: The most errors ``check-config`` prints for one file (a file with one mistake repeated
#: says enough with this many); it says how many more there are.
MAX_REPORTED: Final = 50
_NUMBER: Final = re.compile(r"(\d+)")


def kind_of(value: object) -> str:
    """``value`` described for an error message (``"a list"``, ``"int 5"``, ``"null"``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {value!r}"
    if isinstance(value, str | int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def dotted_path(path: tuple[object, ...], *, long_form: bool) -> str:
    """The field path of a raw document position, as errors name it in both forms."""
    parts = [str(part) for part in path]
    return ".".join(parts if long_form else ["policies", *parts])


def duplicate_key(
    key: object, path: tuple[object, ...], *, long_form: bool, source: str
) -> ConfigError:
    return ConfigError(
        f"duplicate key {key!r}; each key may appear only once, so remove or rename one",
        source=source,
        field=dotted_path(path, long_form=long_form),
    )


def unknown_fields(
    entry: Mapping[object, object], allowed: tuple[str, ...], at: str, source: str
) -> list[ConfigError]:
    """An error for each key of ``entry`` (at path ``at``) not in ``allowed``."""
    return [
        ConfigError(
            f"unknown field {key!r}; expected one of {', '.join(allowed)}"
            + did_you_mean(key, allowed),
            source=source,
            field=f"{at}.{key}",
        )
        for key in entry
        if key not in allowed
    ]


def field_order(error: ConfigError) -> tuple[tuple[int, str, int], ...]:
    """A sort key putting errors in field-path order: whole-file errors first, list indexes
    by number (``routes[2]`` before ``routes[10]``)."""
    parts = _NUMBER.split(error.field or "")
    return tuple(
        (1, "", int(part)) if index % 2 else (0, part, 0) for index, part in enumerate(parts)
    )


class Problems:
    """The errors found so far in one config, in the order found.

    Checks that do not depend on each other run under :meth:`attempt`, which records a
    ConfigError and carries on; :meth:`raise_first` ends the parse if anything was found.
    """

    __slots__ = ("found",)

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def __bool__(self) -> bool:
        return bool(self.found)

    def add(self, error: ConfigError) -> None:
        self.found.extend(error.errors)

    def attempt(self, check: Callable[[], T], default: T) -> T:
        """``check()``, or ``default`` after recording the ConfigError it raised."""
        try:
            return check()
        except ConfigError as error:
            self.add(error)
            return default

    def raise_first(self) -> None:
        """Raise the first error found, carrying all of them, sorted by field path, in
        ``errors``; nothing if none was found."""
        if not self.found:
            return
        first = self.found[0]
        first.errors = tuple(sorted(self.found, key=field_order))
        raise first
