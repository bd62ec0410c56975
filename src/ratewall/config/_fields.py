"""Shared helpers for config errors: how a value is described and how a field path is written."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError

__all__ = ["check_fields", "dotted_path", "duplicate_key", "kind_of"]


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


def check_fields(
    entry: Mapping[object, object], allowed: tuple[str, ...], at: str, source: str
) -> None:
    """ConfigError for the first key of ``entry`` (at path ``at``) not in ``allowed``."""
    for key in entry:
        if key not in allowed:
            raise ConfigError(
                f"unknown field {key!r}; expected one of {', '.join(allowed)}",
                source=source,
                field=f"{at}.{key}",
            )
