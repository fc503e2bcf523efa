"""Traffic rules as tables: validation (each error naming the entry and field), resolution of
``latest``, which revisions must stay routable, and tag host names."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.traffic import (
    ObservedUrls,
    ResolvedTarget,
    TrafficEntry,
    parse_traffic,
    percent_by_revision,
    resolve_traffic,
    routable_revisions,
    tag_host,
    traffic_json,
    traffic_of,
)
from tests.support.validation import field_errors

SLUG = "a" * 26
REVISIONS = (1, 2, 3)


def errors_of(data: Any) -> dict[str, str]:
    return field_errors(lambda: parse_traffic(data, revisions=REVISIONS, slug=SLUG))


@pytest.mark.parametrize(
    "data,expected",
    [
        ([{"latest": True, "percent": 100}], [TrafficEntry(percent=100, latest=True)]),
        (
            [{"revision": 1, "percent": 90}, {"latest": True, "percent": 10, "tag": "canary"}],
            [
                TrafficEntry(percent=90, revision=1),
                TrafficEntry(percent=10, latest=True, tag="canary"),
            ],
        ),
        (
            # a 0 % tag is a preview; percent defaults to 0
            [{"revision": 2, "percent": 100}, {"revision": 3, "tag": "preview"}],
            [
                TrafficEntry(percent=100, revision=2),
                TrafficEntry(percent=0, revision=3, tag="preview"),
            ],
        ),
        (
            # the stored form (every key, nulls) is accepted as input
            [{"revision": None, "latest": True, "percent": 100, "tag": None}],
            [TrafficEntry(percent=100, latest=True)],
        ),
        (
            [
                {"revision": 1, "latest": False, "percent": 50},
                {"revision": 1, "percent": 50, "tag": "b"},
            ],
            [TrafficEntry(percent=50, revision=1), TrafficEntry(percent=50, revision=1, tag="b")],
        ),
        (
            [{"revision": 3, "percent": 100, "tag": "x" * 34}],
            [TrafficEntry(percent=100, revision=3, tag="x" * 34)],
        ),
    ],
)
def test_valid_traffic(data: Any, expected: list[TrafficEntry]) -> None:
    assert parse_traffic(data, revisions=REVISIONS, slug=SLUG) == expected


@pytest.mark.parametrize(
    "data,field,fragment",
    [
        (None, "traffic", "must be a list"),
        ({"latest": True}, "traffic", "must be a list"),
        ([], "traffic", "at least one target"),
        ([{"latest": True, "percent": 5}] * 20 + [{"latest": True}], "traffic", "at most 20"),
        (["latest"], "traffic[0]", "must be an object"),
        ([{"percent": 100}], "traffic[0]", "revision number or latest: true"),
        ([{"latest": False, "percent": 100}], "traffic[0]", "revision number or latest: true"),
        ([{"revision": 1, "latest": True, "percent": 100}], "traffic[0]", "not both"),
        ([{"revision": 9, "percent": 100}], "traffic[0].revision", "has revisions 1, 2, 3"),
        ([{"revision": "1", "percent": 100}], "traffic[0].revision", "revision number"),
        ([{"revision": True, "percent": 100}], "traffic[0].revision", "revision number"),
        ([{"latest": "yes", "percent": 100}], "traffic[0].latest", "true or false"),
        ([{"latest": True, "percent": 101}], "traffic[0].percent", "0 to 100"),
        ([{"latest": True, "percent": -1}], "traffic[0].percent", "0 to 100"),
        ([{"latest": True, "percent": 99.5}], "traffic[0].percent", "whole number"),
        ([{"latest": True, "percent": "100"}], "traffic[0].percent", "whole number"),
        ([{"latest": True, "percent": 90}], "traffic", "sum to 100 (they sum to 90)"),
        (
            [{"latest": True, "percent": 60}, {"revision": 1, "percent": 60}],
            "traffic",
            "sum to 100 (they sum to 120)",
        ),
        (
            [{"latest": True, "percent": 100, "weight": 1}],
            "traffic[0].weight",
            "allowed fields: revision, latest, percent, tag",
        ),
        ([{"latest": True, "percent": 100, "tag": "Preview"}], "traffic[0].tag", "DNS-1123"),
        ([{"latest": True, "percent": 100, "tag": "-p"}], "traffic[0].tag", "DNS-1123"),
        ([{"latest": True, "percent": 100, "tag": "a---b"}], "traffic[0].tag", "without '---'"),
        ([{"latest": True, "percent": 100, "tag": ""}], "traffic[0].tag", "DNS-1123"),
        ([{"latest": True, "percent": 100, "tag": 7}], "traffic[0].tag", "must be a string"),
        (
            [{"latest": True, "percent": 100, "tag": "x" * 35}],
            "traffic[0].tag",
            "at most 34 characters",
        ),
        (
            [
                {"latest": True, "percent": 50, "tag": "a"},
                {"revision": 1, "percent": 50, "tag": "a"},
            ],
            "traffic[1].tag",
            "already used by traffic[0]",
        ),
    ],
)
def test_invalid_traffic_names_the_field(data: Any, field: str, fragment: str) -> None:
    errors = errors_of(data)
    assert field in errors, errors
    assert fragment in errors[field]


def test_every_bad_entry_is_reported_at_once() -> None:
    errors = errors_of(
        [{"revision": 9, "percent": 100}, {"latest": True, "percent": 200, "tag": "B"}]
    )
    assert set(errors) == {"traffic[0].revision", "traffic[1].percent", "traffic[1].tag"}


def test_stored_form_round_trips() -> None:
    entries = [
        TrafficEntry(percent=90, revision=1),
        TrafficEntry(percent=10, latest=True, tag="canary"),
        TrafficEntry(percent=0, revision=2, tag="preview"),
    ]
    stored = traffic_json(entries)
    assert stored[1] == {"revision": None, "latest": True, "percent": 10, "tag": "canary"}
    assert traffic_of(stored) == entries
    assert parse_traffic(stored, revisions=REVISIONS, slug=SLUG) == entries


def test_no_stored_traffic_means_all_to_latest() -> None:
    assert traffic_of(None) == [TrafficEntry(percent=100, latest=True)]


@pytest.mark.parametrize(
    "entries,latest_ready,resolved,routable,shares",
    [
        (
            [TrafficEntry(percent=100, latest=True)],
            None,
            [ResolvedTarget(revision=None, percent=100, tag=None, latest=True)],
            set(),
            {},
        ),
        (
            [TrafficEntry(percent=100, latest=True)],
            3,
            [ResolvedTarget(revision=3, percent=100, tag=None, latest=True)],
            {3},
            {3: 100},
        ),
        (
            [TrafficEntry(percent=90, revision=1), TrafficEntry(percent=10, latest=True, tag="c")],
            2,
            [
                ResolvedTarget(revision=1, percent=90, tag=None, latest=False),
                ResolvedTarget(revision=2, percent=10, tag="c", latest=True),
            ],
            {1, 2},
            {1: 90, 2: 10},
        ),
        (
            # a 0 % target without a tag needs no instance; a 0 % tag (preview) does
            [
                TrafficEntry(percent=100, revision=1),
                TrafficEntry(percent=0, revision=2),
                TrafficEntry(percent=0, revision=3, tag="preview"),
            ],
            3,
            [
                ResolvedTarget(revision=1, percent=100, tag=None, latest=False),
                ResolvedTarget(revision=2, percent=0, tag=None, latest=False),
                ResolvedTarget(revision=3, percent=0, tag="preview", latest=False),
            ],
            {1, 3},
            {1: 100},
        ),
        (
            # two targets on one revision add up
            [TrafficEntry(percent=50, revision=2), TrafficEntry(percent=50, latest=True, tag="t")],
            2,
            [
                ResolvedTarget(revision=2, percent=50, tag=None, latest=False),
                ResolvedTarget(revision=2, percent=50, tag="t", latest=True),
            ],
            {2},
            {2: 100},
        ),
    ],
)
def test_resolution(
    entries: list[TrafficEntry],
    latest_ready: int | None,
    resolved: list[ResolvedTarget],
    routable: set[int],
    shares: dict[int, int],
) -> None:
    got = resolve_traffic(entries, latest_ready=latest_ready)
    assert got == resolved
    assert routable_revisions(got) == routable
    assert percent_by_revision(got) == shares


def test_tag_host() -> None:
    assert tag_host("preview", SLUG, "localhost:8000") == f"preview---{SLUG}.localhost:8000"


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, ObservedUrls()),
        ({"url": "http://a.example", "tags": {}}, ObservedUrls("http://a.example")),
        (
            {"url": None, "tags": {"canary": "http://c.example"}},
            ObservedUrls(None, {"canary": "http://c.example"}),
        ),
        # malformed stored values read as "no URL", never as an error
        ({"url": 3, "tags": {"x": None, "y": ""}}, ObservedUrls()),
        ({"tags": ["canary"]}, ObservedUrls()),
        ("http://a.example", ObservedUrls()),
    ],
)
def test_observed_urls_read_back(stored: Any, expected: ObservedUrls) -> None:
    assert ObservedUrls.from_json(stored) == expected


def test_observed_urls_stored_form() -> None:
    assert ObservedUrls().to_json() is None
    urls = ObservedUrls("http://a.example", {"z": "http://z.example", "b": "http://b.example"})
    assert urls.to_json() == {
        "url": "http://a.example",
        "tags": {"b": "http://b.example", "z": "http://z.example"},
    }
    assert ObservedUrls.from_json(urls.to_json()) == urls
