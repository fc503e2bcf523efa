"""The routing table derived from containers, traffic and ready endpoints (pure)."""

from __future__ import annotations

from app.dataplane.routes import (
    Backend,
    HostRoute,
    RoutedContainer,
    RoutedRevision,
    build_routing_table,
    host_domain,
)
from app.domain.traffic import TrafficEntry


def activator(container_id: str, revision: int) -> str:
    return f"unix//run/act/{container_id}-{revision}.sock"


def test_host_domain_drops_port_and_case() -> None:
    assert host_domain("LocalHost:8000") == "localhost"
    assert host_domain("apps.example.com") == "apps.example.com"


def test_default_is_all_traffic_to_the_ready_revision() -> None:
    container = RoutedContainer(
        id="c1",
        slug="AbC",
        ready_revision=2,
        revisions=(
            RoutedRevision(1, 1, ("127.0.0.1:1000",)),
            RoutedRevision(2, 2, ("127.0.0.1:2001", "127.0.0.1:2000")),
        ),
    )
    table = build_routing_table([container], domain="localhost:8000", activator=None)
    assert table == (
        HostRoute(
            "abc.localhost",
            "c1",
            (Backend("127.0.0.1:2000", 1, 2), Backend("127.0.0.1:2001", 1, 2)),
        ),
    )


def test_split_weights_are_exact_over_uneven_endpoint_counts() -> None:
    container = RoutedContainer(
        id="c1",
        slug="s",
        ready_revision=2,
        revisions=(
            RoutedRevision(1, 3, ("a:1", "a:2", "a:3")),
            RoutedRevision(2, 2, ("b:1", "b:2")),
        ),
        traffic=(TrafficEntry(90, revision=1), TrafficEntry(10, latest=True, tag="next")),
    )
    (tagged, main) = build_routing_table([container], domain="d", activator=None)
    weights = {b.address: b.weight for b in main.backends}
    total_1 = sum(w for a, w in weights.items() if a.startswith("a:"))
    total_2 = sum(w for a, w in weights.items() if a.startswith("b:"))
    assert total_1 * 10 == total_2 * 90
    assert len({w for a, w in weights.items() if a.startswith("a:")}) == 1
    assert main.host == "s.d"
    assert tagged.host == "next---s.d"
    assert tagged.backends == (Backend("b:1", 1, 2), Backend("b:2", 1, 2))


def test_tag_at_zero_percent_still_gets_a_host() -> None:
    container = RoutedContainer(
        id="c1",
        slug="s",
        ready_revision=2,
        revisions=(RoutedRevision(1, 1, ("a:1",)), RoutedRevision(2, 1, ("b:1",))),
        traffic=(TrafficEntry(100, revision=2), TrafficEntry(0, revision=1, tag="old")),
    )
    table = build_routing_table([container], domain="d", activator=None)
    assert [r.host for r in table] == ["old---s.d", "s.d"]
    assert table[0].backends == (Backend("a:1", 1, 1),)
    assert table[1].backends == (Backend("b:1", 1, 2),)


def test_revision_without_ready_endpoint_goes_to_activator_or_nowhere() -> None:
    container = RoutedContainer(
        id="c1",
        slug="s",
        ready_revision=1,
        revisions=(RoutedRevision(1, 0, ()), RoutedRevision(2, 1, ("b:1",))),
        traffic=(TrafficEntry(50, revision=1), TrafficEntry(50, revision=2)),
    )
    (with_activator,) = build_routing_table([container], domain="d", activator=activator)
    assert with_activator.backends == (
        Backend("b:1", 1, 2),
        Backend("unix//run/act/c1-1.sock", 1, 1),
    )
    (without,) = build_routing_table([container], domain="d", activator=None)
    assert without.backends == (Backend("b:1", 1, 2),)


def test_nothing_ready_means_no_backends_and_tables_are_sorted() -> None:
    containers = [
        RoutedContainer(id="c2", slug="zz", ready_revision=None),
        RoutedContainer(id="c1", slug="aa", ready_revision=None),
    ]
    table = build_routing_table(containers, domain="d", activator=None)
    assert table == (HostRoute("aa.d", "c1", ()), HostRoute("zz.d", "c2", ()))
    assert table == build_routing_table(list(reversed(containers)), domain="d", activator=None)
