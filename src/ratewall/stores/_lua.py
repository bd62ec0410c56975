"""The decision script: ``lua/_prelude.lua``, the five ``lua/<algorithm>.lua`` files and
``lua/_main.lua``, concatenated (package data); and the concurrency slots' script,
``lua/concurrency.lua``, alone. Each file's header states its KEYS, ARGV, reply shape and
units."""

from __future__ import annotations

import importlib.resources
from typing import Final

from ..algorithms import ALGORITHM_CODES

__all__ = ["SCRIPT", "SLOT_SCRIPT"]

_SCRIPT_PARTS: Final = ("_prelude", *ALGORITHM_CODES, "_main")


def _load_script(parts: tuple[str, ...]) -> str:
    folder = importlib.resources.files("ratewall").joinpath("lua")
    return "\n".join(folder.joinpath(f"{part}.lua").read_text("utf-8") for part in parts)


SCRIPT: Final = _load_script(_SCRIPT_PARTS)
SLOT_SCRIPT: Final = _load_script(("concurrency",))
