"""Shards: a sweep's missing items, in the form sent to a worker, and the ledger that
makes retries safe.

A shard is one chunk of one (configuration, task) cell named by ids only (configuration
id, task name, item ids) plus the items themselves (prompts: small, and they spare the
workers the dataset files). Its key is the store's item keys, so a shard computed twice
(a worker killed after it finished but before its result arrived, then retried) is
written once: the ledger drops the second result, and the store's primary keys would
ignore it anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import RefusalScopeError


@dataclass(frozen=True)
class Shard:
    """What a worker needs to compute one chunk: ids and items, never weights."""

    config_id: str
    task: str
    ids: tuple[str, ...]
    items: tuple = field(compare=False, repr=False)
    label: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        """(config_id, task, sorted item ids): the store's keys for the rows this shard writes."""
        return self.config_id, self.task, tuple(sorted(self.ids))


def to_shards(chunks: Iterable) -> list[Shard]:
    """Shards for a sweep's chunks (`evaluation.sweep.Chunk`), in the sweep's order."""
    return [
        Shard(c.config.config_id, c.spec.name, tuple(c.ids), tuple(c.items), f"{c.config.label} · {c.spec.name}")
        for c in chunks
    ]


class ShardLedger:
    """Which shards wait, which ran how often, which are done.

    A shard whose worker died goes back to the front of the queue until it has been tried
    `max_attempts` times; then the sweep stops with an error naming it (a shard that kills
    every worker it lands on, e.g. one that runs out of memory, must not loop forever)."""

    def __init__(self, shards: Iterable[Shard], max_attempts: int = 3):
        if max_attempts < 1:
            raise RefusalScopeError(f"max_attempts must be at least 1, got {max_attempts}")
        self.queue: deque[Shard] = deque(shards)
        self.max_attempts = max_attempts
        self.attempts: dict[tuple, int] = {}
        self.done: set[tuple] = set()
        self.retried = 0
        self.total = len(self.queue)

    def take(self) -> Shard | None:
        """The next shard to run (counted as an attempt), or None when none waits."""
        while self.queue:
            shard = self.queue.popleft()
            if shard.key in self.done:
                continue
            self.attempts[shard.key] = self.attempts.get(shard.key, 0) + 1
            return shard
        return None

    def failed(self, shard: Shard, reason: str) -> None:
        """Put a shard whose worker died back in front, or give up after max_attempts."""
        if shard.key in self.done:
            return
        tried = self.attempts.get(shard.key, 0)
        if tried >= self.max_attempts:
            raise RefusalScopeError(
                f"shard {shard.label or shard.key[:2]} ({len(shard.ids)} items) failed on {tried} workers: {reason}",
                "look at the Ray worker logs (out of memory? a crash in the model?); the results computed so far are "
                "stored, a rerun computes only what is missing",
            )
        self.retried += 1
        self.queue.appendleft(shard)

    def finished(self, shard: Shard) -> bool:
        """Mark a shard done; False if it already was (its result must not be written again)."""
        if shard.key in self.done:
            return False
        self.done.add(shard.key)
        return True

    @property
    def complete(self) -> bool:
        return len(self.done) == self.total
