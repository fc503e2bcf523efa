from __future__ import annotations

from collections.abc import Iterator

import kubernetes.client
import pytest

from tests.support.kmock_k8s import EmulatorThread


@pytest.fixture
def k8s() -> Iterator[EmulatorThread]:
    """A Kubernetes API emulator (kmock) served over real HTTP from a background thread."""
    emulator = EmulatorThread().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def api_client(k8s: EmulatorThread) -> Iterator[kubernetes.client.ApiClient]:
    """The official client, configured for the emulator at http://127.0.0.1:<port>."""
    client = k8s.api_client()
    try:
        yield client
    finally:
        client.close()
