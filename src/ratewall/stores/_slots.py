"""Redis Cluster hash slots: one atomic script call can only touch keys of one slot, so
batches are split per slot and their replies put back in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.crc import key_slot as redis_key_slot

from .._calls import Reply, Request

__all__ = ["key_slot", "per_slot", "slot_parts"]


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16 of its hash tag, mod 16384)."""
    return int(redis_key_slot(key.encode("utf-8", "surrogatepass")))


def slot_parts(slot_of: Callable[[str], int], requests: Sequence[Request]) -> dict[int, list[int]]:
    """Request indexes by hash slot, in order. A request's keys must share one slot (the keys
    of one identity always do: the identity is the hash tag)."""
    parts: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        slot = slot_of(request[0].key)
        if any(slot_of(call.key) != slot for call in request[1:]):
            raise ValueError(
                "on a Redis Cluster, the policies of one check_many request must be for one "
                "identity (one hash slot); check the others separately"
            )
        parts.setdefault(slot, []).append(index)
    return parts


def merge(
    size: int, parts: dict[int, list[int]], results: Sequence[list[list[Reply]]]
) -> list[list[Reply]]:
    """Put per-slot replies back in the order of the requests."""
    merged: list[list[Reply]] = [[] for _ in range(size)]
    for indexes, replies in zip(parts.values(), results, strict=True):
        for index, reply in zip(indexes, replies, strict=True):
            merged[index] = reply
    return merged


def per_slot(
    slot_of: Callable[[str], int],
    requests: Sequence[Request],
    run: Callable[[Sequence[Request]], list[list[Reply]]],
) -> list[list[Reply]]:
    parts = slot_parts(slot_of, requests)
    results = [run([requests[i] for i in indexes]) for indexes in parts.values()]
    return merge(len(requests), parts, results)
