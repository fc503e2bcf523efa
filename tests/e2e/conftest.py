"""End-to-end tests run against real Podman, Caddy, Redis and PostgreSQL on a 2-core machine.

Every test here is retried up to twice (pytest-rerunfailures) because of one known defect that
touches whatever goes through the data plane: a Caddy config load can close a connection that
arrives during the swap, and a replica's Caddy is reprogrammed a moment after the status it
serves from changed (issue 10, docs/dataplane.md). A deterministic failure still fails; remove
this once loads stop replacing the server.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/e2e/" in str(item.path) and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=1))
