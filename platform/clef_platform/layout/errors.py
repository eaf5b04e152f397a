"""Errors of stored data. Each names the object it is about, so a user can find and fix it."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset that cannot be read as it is: uncommitted, of another schema, or damaged."""


class ShardError(DatasetError):
    """A shard that is not what the shard index says (digest, size, count) or not a tar."""

    def __init__(self, shard: str, reason: str) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard, self.reason = shard, reason


class RecordError(DatasetError):
    """A record whose signal or meta is not what was stored."""

    def __init__(self, shard: str, key: str, reason: str) -> None:
        super().__init__(f"shard {shard}, record {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


class ExportError(ValueError):
    """An export that is incomplete, of another schema, or whose files fail their digests."""
