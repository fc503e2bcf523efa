"""HAProxy's configuration and map, rendered from routing tables (pure), and checked by the real
``haproxy -c``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from app.dataplane.haproxy import (
    FAILED,
    UNAVAILABLE,
    HAProxyOptions,
    Slot,
    backend_names,
    ip_port,
    map_text,
    plan,
    render,
    scaled_weights,
    server_address,
    slots_for,
)
from app.dataplane.haproxy_supervisor import haproxy_binary
from app.dataplane.routes import Backend, HostRoute


def host(name: str, *backends: tuple[str, int], failed: bool = False) -> HostRoute:
    return HostRoute(name, "c1", tuple(Backend(a, w, 1) for a, w in backends), failed)


def test_plan_routes_each_kind_of_host() -> None:
    activator = "127.0.0.1:41000"
    table = (
        host("cold.localhost"),
        host("dead.localhost", failed=True),
        host("idle.localhost", (activator, 1)),
        host("one.localhost", ("127.0.0.1:42000", 1)),
        host("split.localhost", ("127.0.0.1:42000", 9), ("127.0.0.1:42001", 1)),
        host("wake.localhost", ("127.0.0.1:42000", 9), (activator, 1)),
    )
    planned = plan(table, direct=lambda address: address == activator)
    assert planned.hosts == {
        "cold.localhost": UNAVAILABLE,
        "dead.localhost": FAILED,
        "idle.localhost": "@127.0.0.1:41000",  # no backend of its own
        "one.localhost": "",  # the supervisor names its backend
        "split.localhost": "",
        "wake.localhost": "",
    }
    assert planned.pools == {
        "one.localhost": {"127.0.0.1:42000": 1},
        "split.localhost": {"127.0.0.1:42000": 9, "127.0.0.1:42001": 1},
        "wake.localhost": {"127.0.0.1:42000": 9, activator: 1},
    }
    # Without a direct predicate every host with backends gets a pool.
    assert "idle.localhost" in plan(table).pools


def test_weights_fit_haproxy_and_keep_their_proportions() -> None:
    assert scaled_weights({"a": 9, "b": 1}) == {"a": 9, "b": 1}
    assert scaled_weights({"a": 1000, "b": 10}) == {"a": 256, "b": 3}
    assert scaled_weights({"a": 100_000, "b": 1}) == {"a": 256, "b": 1}  # never 0


def test_addresses_and_names() -> None:
    assert server_address("unix//run/x.sock") == "unix@/run/x.sock"
    assert server_address("127.0.0.1:80") == "127.0.0.1:80"
    assert ip_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert ip_port("unix//run/x.sock") is None
    assert [s.name for s in slots_for([])] == ["s1", "s2", "s3", "s4"]
    assert len(slots_for(["a", "b", "c"])) == 6  # room for as many again
    assert backend_names(3, ["h2"]) == ["h1", "h3", "h4"]
    assert map_text({"b.localhost": "h1", "a.localhost": "!503"}) == (
        "a.localhost !503\nb.localhost h1\n"
    )


def test_render_has_the_routes_the_responders_and_the_api(tmp_path: Path) -> None:
    options = HAProxyOptions(
        listen="127.0.0.1:8000",
        directory=str(tmp_path),
        domain="apps.example.com",
        api=f"unix/{tmp_path}/api.sock",
    )
    slots = [Slot("s1", "127.0.0.1:42000", 9), Slot("s2", "127.0.0.1:42001", 1), Slot("s3")]
    text = render(options, {"h1": slots, "h2": slots_for([])}, version="v7")
    assert "description v7" in text
    assert "expose-fd listeners" in text and "master-worker" in text
    assert r"-m reg ^[^.]+\.apps\.example\.com$" in text  # one label under the domain
    assert f"map({tmp_path}/hosts.map)" in text
    assert "hdr Retry-After 2" in text
    assert '"no container serves this host\\n"' in text
    assert f"server api unix@{tmp_path}/api.sock" in text
    assert "server s1 127.0.0.1:42000 weight 9" in text
    assert "server s3 127.0.0.1:1 weight 1 disabled" in text  # an empty slot
    assert "backend h2\n    balance roundrobin\n" in text
    assert "timeout tunnel 1h" in text and "option redispatch 1" in text


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    options = HAProxyOptions(listen="127.0.0.1:8000", directory=str(tmp_path), domain="localhost")
    (tmp_path / "hosts.map").write_text(map_text({"a.localhost": "h1"}))
    config = tmp_path / "haproxy.cfg"
    slots = [Slot("s1", "127.0.0.1:42000", 1), *slots_for([])[1:]]
    config.write_text(render(options, {"h1": slots, "h2": slots_for([])}, version="v1"))
    binary = haproxy_binary()
    assert binary is not None
    checked = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_engine_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app import server
    from app.dataplane import haproxy_supervisor
    from app.settings import Settings

    monkeypatch.delenv("DOCKYARD_PROXY_ENGINE", raising=False)  # the suite may run on haproxy
    monkeypatch.delenv("DOCKYARD_HAPROXY_BIN", raising=False)
    assert Settings(data_dir=tmp_path).proxy_engine == "auto"  # the default
    assert server.proxy_engine(Settings(data_dir=tmp_path, proxy_engine="haproxy")) == "haproxy"
    assert server.proxy_engine(Settings(data_dir=tmp_path, proxy_engine="caddy")) == "caddy"
    found = server.proxy_engine(Settings(data_dir=tmp_path))
    assert found == ("haproxy" if haproxy_binary() is not None else "caddy")
    monkeypatch.setattr(haproxy_supervisor.shutil, "which", lambda _name: None)
    monkeypatch.setattr(haproxy_supervisor, "DEFAULT_BINARY", str(tmp_path / "missing"))
    assert server.proxy_engine(Settings(data_dir=tmp_path)) == "caddy"  # auto, none installed
