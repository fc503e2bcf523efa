"""The engine stream helpers without an engine: Docker host URLs and the multiplexed log format
(the Podman e2e tests read real streams)."""

from __future__ import annotations

import struct

import pytest

from app.domain.logtime import parse_ns
from app.runtime.engine_streams import LogParser, connector_for

STAMP = "2026-11-27T11:26:42.5Z"


def frame(stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream_id, len(payload)) + payload


def test_docker_host_urls() -> None:
    assert connector_for("unix:///run/podman/podman.sock") == (
        "http://localhost",
        "/run/podman/podman.sock",
    )
    assert connector_for("http+unix:///var/run/docker.sock")[1] == "/var/run/docker.sock"
    assert connector_for(None)[1] == "/var/run/docker.sock"
    assert connector_for("tcp://127.0.0.1:2375") == ("http://127.0.0.1:2375", None)
    assert connector_for("https://engine:2376") == ("https://engine:2376", None)
    with pytest.raises(ValueError, match="DOCKYARD_DOCKER_HOST"):
        connector_for("ssh://user@host")


def test_frames_split_anywhere_give_whole_lines() -> None:
    data = (
        frame(1, f"{STAMP} one\n{STAMP} tw".encode())
        + frame(2, f"{STAMP} oops\r\n".encode())
        + frame(1, b"o\n")
        + frame(1, "2026-11-27T11:26:43Z caf\u00e9\n".encode())
    )
    for cut in range(len(data) + 1):  # the engine's writes and our reads never line up
        parser = LogParser(revision=3)
        lines = parser.feed(data[:cut]) + parser.feed(data[cut:]) + parser.finish()
        assert [(ln.stream, ln.line) for ln in lines] == [
            ("stdout", "one"),
            ("stderr", "oops"),
            ("stdout", "two"),
            ("stdout", "caf\u00e9"),
        ], cut
        assert {ln.revision for ln in lines} == {3}
        assert lines[0].ns == parse_ns(STAMP) and lines[3].ns == parse_ns("2026-11-27T11:26:43Z")


def test_unstamped_lines_are_kept_whole_and_since_filters() -> None:
    parser = LogParser(revision=1, since_ns=parse_ns("2026-11-27T11:26:43Z"))
    lines = parser.feed(
        frame(1, f"{STAMP} too early\nno stamp at all\n2026-11-27T11:26:44Z late\n".encode())
    )
    assert [ln.line for ln in lines] == ["no stamp at all", "late"]  # stamped on arrival
    tail = LogParser(revision=1)
    assert tail.feed(frame(1, f"{STAMP} no newline at the end".encode())) == []
    assert [ln.line for ln in tail.finish()] == ["no newline at the end"]
