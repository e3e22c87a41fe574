"""The record types every layer shares: what a consumer hands over and a stage reads. Neutral:
no Kafka client and no processing stage is imported here, so the Kafka layer (which builds
records) and the stages (which read them) depend on this module and not on each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, 1.5 us a
# record against 0.2 us, paid for every event consumed. Treat records as read-only all the same.
@dataclass(slots=True)
class InputRecord:
    """One consumed Kafka record, as the pipeline and the tools that read topics see it (kept free
    of any client's types); read-only. Headers are in their order on the wire, duplicates kept."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    # None: present but unreadable (not UTF-8 names); a header's value may be null.
    headers: tuple[tuple[str, bytes | None], ...] | None = ()

    def header(self, name: str) -> bytes | None:
        """The value of the last header called `name` (None: a null value); KeyError when there is
        none, or when the headers could not be read."""
        for header_name, value in reversed(self.headers or ()):
            if header_name == name:
                return value
        raise KeyError(name)

    def json(self) -> Any:
        """The value parsed as JSON (for reading the worker's own outputs); ValueError on a tombstone."""
        if self.value is None:
            raise ValueError(f"{self.topic}/{self.partition}@{self.offset} has no value (a tombstone)")
        return orjson.loads(self.value)

    @property
    def source(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "timestamp_ms": self.timestamp_ms}
