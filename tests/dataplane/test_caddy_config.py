"""Rendering a routing table to Caddy's JSON configuration (pure)."""

from __future__ import annotations

from app.dataplane.caddy import ProxyOptions, render
from app.dataplane.routes import Backend, HostRoute

OPTIONS = ProxyOptions(
    listen="127.0.0.1:8000",
    admin="unix//run/dy/caddy-admin.sock",
    domain="localhost",
    api="unix//run/dy/api.sock",
)


def test_weighted_route_503_route_404_wildcard_then_api() -> None:
    table = (
        HostRoute(
            "a.localhost", "c1", (Backend("127.0.0.1:1", 9, 1), Backend("127.0.0.1:2", 1, 2))
        ),
        HostRoute("b.localhost", "c2", ()),
    )
    config = render(table, OPTIONS)
    assert config["admin"] == {"listen": OPTIONS.admin, "config": {"persist": False}}
    server = config["apps"]["http"]["servers"]["dockyard"]
    assert server["listen"] == ["127.0.0.1:8000"]
    assert server["automatic_https"] == {"disable": True}
    assert server["read_header_timeout"]
    a, b, unknown, api = server["routes"]

    assert a["match"] == [{"host": ["a.localhost"]}]
    (proxy,) = a["handle"]
    assert proxy["handler"] == "reverse_proxy"
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:1"}, {"dial": "127.0.0.1:2"}]
    assert proxy["load_balancing"]["try_duration"] == "3s"
    assert proxy["load_balancing"]["selection_policy"] == {
        "policy": "weighted_round_robin",
        "weights": [9, 1],
    }
    assert proxy["stream_close_delay"]
    assert proxy["transport"]["keep_alive"]["enabled"] is True

    (unavailable,) = b["handle"]
    assert unavailable["status_code"] == 503
    assert unavailable["headers"]["Retry-After"] == ["2"]

    assert unknown["match"] == [{"host": ["*.localhost"]}]
    assert unknown["handle"][0]["status_code"] == 404
    assert "match" not in api
    assert api["handle"][0]["upstreams"] == [{"dial": "unix//run/dy/api.sock"}]


def test_equal_tables_render_equal_configs() -> None:
    table = (HostRoute("a.localhost", "c1", (Backend("127.0.0.1:1", 1, 1),)),)
    assert render(table, OPTIONS) == render(tuple(table), OPTIONS)


def test_without_api_every_other_host_is_404() -> None:
    options = ProxyOptions(listen=":1", admin="unix//x.sock", domain="example.com")
    routes = render((), options)["apps"]["http"]["servers"]["dockyard"]["routes"]
    assert [r["handle"][0]["status_code"] for r in routes] == [404, 404]
