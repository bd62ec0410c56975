"""What the servers say they ran (``INFO commandstats``), for tests that count round trips."""

from __future__ import annotations

from typing import Any, cast

import redis

# Every way ratewall runs its script: FCALL where the server has functions, else EVALSHA,
# and EVAL after NOSCRIPT.
SCRIPT_COMMANDS = ("cmdstat_fcall", "cmdstat_evalsha", "cmdstat_eval")


def script_calls(*clients: redis.Redis) -> int:
    """Script executions that ran on these servers. Refused calls ("Function not found",
    NOSCRIPT: the step before loading the script) do not count."""
    total = 0
    for client in clients:
        stats = cast("dict[str, dict[str, Any]]", client.info("commandstats"))
        for name in SCRIPT_COMMANDS:
            entry = stats.get(name, {})
            total += entry.get("calls", 0) - entry.get("failed_calls", 0)
    return total


def libraries(client: redis.Redis) -> set[str]:
    """The names of the function libraries loaded on the server."""
    names = set()
    for library in client.function_list():
        # A dict in RESP3, a flat list of names and values in RESP2.
        pairs = iter(library)
        fields = library if isinstance(library, dict) else dict(zip(pairs, pairs, strict=True))
        name = fields.get(b"library_name", fields.get("library_name"))
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names
