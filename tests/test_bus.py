"""The event bus on a real Redis and a real PostgreSQL: what is published right after
subscribing arrives.

broadcaster 0.3.1's ``redis://`` backend reports a subscription ready before Redis has
registered the SUBSCRIBE when used with redis-py 8.0-8.1, so the first messages are lost. The
project pins redis-py below 8 for that reason; this test fails if the pin is lifted too early.
"""

from __future__ import annotations

import asyncio

import pytest

from app.bus import Bus


def bus_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{kind}_url" if kind == "redis" else "postgres_bus_url"))


@pytest.mark.parametrize("url_kind", ["memory", "redis", "postgres"])
async def test_a_message_published_right_after_subscribing_arrives(
    url_kind: str, request: pytest.FixtureRequest
) -> None:
    url = bus_url(url_kind, request)
    # memory:// is one process's bus; a shared backend is tested across two connections
    publisher = Bus(url)
    subscriber = publisher if url_kind == "memory" else Bus(url)
    await publisher.connect()
    if subscriber is not publisher:
        await subscriber.connect()
    try:
        for attempt in range(20):
            channel = f"dockyard.test.{attempt}"
            async with subscriber.subscribe(channel) as messages:
                await publisher.publish(channel, {"n": attempt})
                received = await asyncio.wait_for(anext(messages), 5)
            assert received == {"n": attempt}
    finally:
        await publisher.disconnect()
        if subscriber is not publisher:
            await subscriber.disconnect()
