"""Caddy's configuration (pure): no container route in it, every container host resolved per
request through the route resolver; and the table document the resolver serves."""

from __future__ import annotations

from app.dataplane.caddy import ProxyOptions, Responders, render, resolver_table, table_version
from app.dataplane.routes import Backend, HostRoute
from app.dataplane.supervisor import _ephemeral_low, free_port

RESPONDERS = Responders(unknown=7001, unavailable=7002, failed=7003)
OPTIONS = ProxyOptions(
    listen="127.0.0.1:8000",
    admin="unix//run/dy/caddy-admin.sock",
    domain="localhost",
    api="unix//run/dy/api.sock",
    resolver="tcp/127.0.0.1:7000",
    responders=RESPONDERS,
)


def test_container_hosts_resolve_per_request_and_other_hosts_reach_the_api() -> None:
    config = render(OPTIONS)
    assert config["admin"] == {"listen": OPTIONS.admin, "config": {"persist": False}}
    servers = config["apps"]["http"]["servers"]
    server = servers["dockyard"]
    assert server["listen"] == ["127.0.0.1:8000"]
    assert server["automatic_https"] == {"disable": True}
    assert server["read_header_timeout"]
    containers, api = server["routes"]

    assert containers["match"] == [{"host": ["*.localhost"]}]
    (proxy,) = containers["handle"]
    assert proxy["handler"] == "reverse_proxy"
    assert "upstreams" not in proxy
    assert proxy["dynamic_upstreams"] == {
        "source": "srv",
        "name": "{http.request.host}.dy.",
        "refresh": "250ms",
        "grace_period": "3s",
        "resolver": {"addresses": ["tcp/127.0.0.1:7000"]},
        "dial_timeout": "2s",
        "dial_network": "tcp4",
    }
    # SRV targets are names the same resolver turns into addresses (over UDP: small answers).
    assert proxy["transport"]["resolver"] == {"addresses": ["udp/127.0.0.1:7000"]}
    assert proxy["load_balancing"]["selection_policy"] == {"policy": "random"}
    assert proxy["load_balancing"]["try_duration"] == "3s"
    assert proxy["transport"]["keep_alive"]["enabled"] is True

    assert "match" not in api
    assert api["handle"][0]["upstreams"] == [{"dial": "unix//run/dy/api.sock"}]
    assert "resolver" not in api["handle"][0]["transport"]


def test_responders_answer_404_503_with_retry_after_and_503_failed() -> None:
    servers = render(OPTIONS)["apps"]["http"]["servers"]
    answers = {}
    for name, port in (("unknown", 7001), ("unavailable", 7002), ("failed", 7003)):
        server = servers[f"responder-{name}"]
        assert server["listen"] == [f"127.0.0.1:{port}"]
        (route,) = server["routes"]
        answers[name] = route["handle"][0]
    assert answers["unknown"]["status_code"] == 404
    assert answers["unavailable"]["status_code"] == 503
    assert answers["unavailable"]["headers"]["Retry-After"] == ["2"]
    assert "{http.request.host}" in answers["unavailable"]["body"]
    assert answers["failed"]["status_code"] == 503
    assert "Retry-After" not in answers["failed"]["headers"]


def test_the_configuration_does_not_depend_on_the_routes() -> None:
    # Route changes never reload Caddy: the table is not an input of render at all.
    assert render(OPTIONS) == render(OPTIONS)


def test_without_api_every_other_host_is_404() -> None:
    options = ProxyOptions(listen=":1", admin="unix//x.sock", domain="example.com")
    config = render(options)
    routes = config["apps"]["http"]["servers"]["dockyard"]["routes"]
    assert routes[1]["handle"][0]["status_code"] == 404
    assert list(config["apps"]["http"]["servers"]) == ["dockyard"]


def test_resolver_table_lists_backends_and_responders_by_why() -> None:
    table = (
        HostRoute(
            "a.localhost", "c1", (Backend("127.0.0.1:1", 9, 1), Backend("127.0.0.1:2", 1, 2))
        ),
        HostRoute("b.localhost", "c2", ()),
        HostRoute("c.localhost", "c3", (), failed=True),
    )
    document = resolver_table(table, RESPONDERS)
    assert document == {
        "hosts": {
            "a.localhost": [("127.0.0.1:1", 9), ("127.0.0.1:2", 1)],
            "b.localhost": [("127.0.0.1:7002", 1)],
            "c.localhost": [("127.0.0.1:7003", 1)],
        },
        "fallback": {"unknown": "127.0.0.1:7001"},
    }
    assert table_version(document) == table_version(resolver_table(tuple(table), RESPONDERS))
    assert table_version(document) != table_version(resolver_table(table[:1], RESPONDERS))


def test_private_ports_are_picked_below_the_ephemeral_range() -> None:
    # A port the kernel hands out with bind(0) is what other servers pick for themselves; Caddy
    # binds with SO_REUSEPORT, so a responder there would silently share another server's port.
    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports)
