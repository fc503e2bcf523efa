"""Connections whose request headers never finish are closed (issue 16: 1,000 of them were held
for 30 s and more). A real uvicorn server with Dockyard's protocol classes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from app.httpserver import h11_protocol, http_protocol

TIMEOUT = 0.5


@pytest.fixture(params=["httptools", "h11"])
def server_port(request: pytest.FixtureRequest, app: FastAPI) -> Iterator[int]:
    factory: Callable[[float], type[asyncio.Protocol]] = (
        http_protocol if request.param == "httptools" else h11_protocol
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=factory(TIMEOUT), log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None if still open after ``seconds``)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_unfinished_headers_are_dropped(server_port: int) -> None:
    held = []
    for partial in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /hea"):
        sock = socket.create_connection(("127.0.0.1", server_port))
        sock.sendall(partial)
        held.append(sock)
    try:
        for sock in held:
            elapsed = _closed_within(sock, TIMEOUT * 6)
            assert elapsed is not None, "the server kept a connection without complete headers"
    finally:
        for sock in held:
            sock.close()


def test_a_trickle_of_header_bytes_does_not_keep_a_connection(server_port: int) -> None:
    with socket.create_connection(("127.0.0.1", server_port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        while not closed and time.monotonic() - start < TIMEOUT * 10:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # progress, but the headers never end
            except OSError:
                break
            closed = _closed_within(sock, TIMEOUT / 5) is not None
        assert time.monotonic() - start < TIMEOUT * 10, "a trickling client kept its connection"


def test_complete_requests_are_served(server_port: int) -> None:
    with socket.create_connection(("127.0.0.1", server_port)) as sock:
        for _ in range(2):  # keep-alive: a second request on the same connection
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            time.sleep(TIMEOUT / 2)
