"""A minimal server-sent events reader for tests (and the benchmark)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SseEvent:
    event: str = "message"
    id: str | None = None
    data: list[str] = field(default_factory=list)
    comment: str | None = None

    def json(self) -> Any:
        return json.loads("\n".join(self.data))


def iter_events(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Events (and comment lines, as events with ``comment`` set) from the stream's lines."""
    current = SseEvent()
    pending = False
    for line in lines:
        if line == "":
            if pending:
                yield current
            current, pending = SseEvent(), False
        elif line.startswith(":"):
            yield SseEvent(event="comment", comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            pending = True
            if name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "data":
                current.data.append(value)
