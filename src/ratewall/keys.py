"""Redis key names: ``<prefix>:{<identity>}:<policy>``.

The braces are Redis Cluster's hash tag, so every key of one identity lives on one shard. An
identity made only of ``A-Z a-z 0-9 . _ @ -`` and at most 64 characters is written as is. Any
other identity (empty, longer, or with any other character, braces included) is written as
``~`` followed by the hex BLAKE2b-256 digest of its UTF-8 bytes: ``~`` is outside the raw
alphabet, so a digest form never equals a raw one, and digests do not collide in practice.
Keys are therefore at most ``len(prefix) + len(policy) + 69`` characters.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from .errors import ConfigError

__all__ = ["DEFAULT_PREFIX", "KeyBuilder", "encode_identity", "validate_name", "validate_prefix"]

DEFAULT_PREFIX: Final = "ratelimit"
MAX_RAW_IDENTITY: Final = 64
_RAW_IDENTITY = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9._@:/-]{1,64}")


def encode_identity(identity: str) -> str:
    """The identity as it appears inside a key's hash tag."""
    if _RAW_IDENTITY.fullmatch(identity):
        return identity
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=32)
    return "~" + digest.hexdigest()


def validate_name(name: object, *, source: str, field: str) -> str:
    """Policy names appear in keys and headers: a safe alphabet, 1 to 64 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"policy name {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ @ -",
            source=source,
            field=field,
        )
    return name


def validate_prefix(prefix: object, *, source: str, field: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"key prefix {prefix!r} must be 1-64 characters of A-Z a-z 0-9 . _ @ : / - "
            "(no braces: they would change the Redis Cluster hash tag)",
            source=source,
            field=field,
        )
    return prefix


# Keys remembered per policy; past this many, a policy's cache starts afresh. Large enough
# for ten thousand hot identities, small enough (about 2 MB) not to matter.
_CACHED_KEYS: Final = 16_384


class KeyBuilder:
    """Builds keys for one prefix; remembers recent identities' keys, per policy."""

    __slots__ = ("_caches", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = validate_prefix(prefix, source="<limiter>", field="key_prefix")
        self._caches: dict[str, dict[str, str]] = {}

    def cache_for(self, policy: str) -> dict[str, str]:
        """``policy``'s cache, identity -> key, for hot paths to read before calling
        :meth:`key` (which fills it). The same dict for the builder's whole life."""
        return self._caches.setdefault(policy, {})

    def key(self, identity: str, policy: str) -> str:
        cache = self.cache_for(policy)
        key = cache.get(identity)
        if key is None:
            key = f"{self.prefix}:{{{encode_identity(identity)}}}:{policy}"
            if len(cache) >= _CACHED_KEYS:
                cache.clear()
            cache[identity] = key
        return key
