"""Reading a runtime's log batches line by line, as tests like to."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.runtime.base import LogLine


async def lines_of(batches: AsyncIterator[list[LogLine]]) -> AsyncIterator[LogLine]:
    """The lines of ``Runtime.log_batches`` one by one (closing the batches when done)."""
    try:
        async for batch in batches:
            for line in batch:
                yield line
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
