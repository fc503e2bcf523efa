"""A container's traffic: which revisions serve its requests, by percent, and under which tags.

Traffic belongs to the container, not to a revision (Knative's Route apart from its
Configuration): changing it makes no new revision, and a rollback (a new revision made from an
old spec) moves only the ``latest`` targets. This module is pure so the API (validation, views),
the reconciler and the data plane (proxy routes, which revisions must stay up) share one reading
of it:

- *desired* traffic is what the user set, stored in ``Container.traffic`` as JSON
  (``TrafficEntry``; None means 100 % to the latest ready revision);
- *resolved* traffic has ``latest`` replaced by the newest ready revision (``ResolvedTarget``).

Validation is hand-written rather than a pydantic model: the rules are cross-entry (sum,
uniqueness, revision existence, host length with the slug) and each message must name the entry
as ``traffic[i].field``, which a dozen lines do more plainly than custom pydantic error mapping.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.domain.errors import FieldError, ValidationFailed

MAX_TRAFFIC_ENTRIES = 20
MAX_HOST_LABEL = 63
TAG_SEPARATOR = "---"
TAG_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
ENTRY_FIELDS = ("revision", "latest", "percent", "tag")


@dataclass(frozen=True)
class TrafficEntry:
    """One desired target, as stored in ``Container.traffic``."""

    percent: int
    revision: int | None = None
    """A fixed revision number; None when ``latest`` is set."""
    latest: bool = False
    """Follow the newest ready revision (and so every later update or rollback)."""
    tag: str | None = None
    """Gives the target its own URL ``<tag>---<slug>.<domain>``, even at 0 % (a preview)."""


@dataclass(frozen=True)
class ResolvedTarget:
    """A target with ``latest`` replaced by the revision it means right now."""

    revision: int | None
    """None: the target is ``latest`` while no revision is ready yet."""
    percent: int
    tag: str | None
    latest: bool


LATEST_100 = TrafficEntry(percent=100, latest=True)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_errors(
    index: int, item: object, *, revisions: Collection[int], slug: str
) -> tuple[TrafficEntry | None, list[FieldError]]:
    at = f"traffic[{index}]"
    if not isinstance(item, Mapping):
        return None, [FieldError(at, 'must be an object, e.g. {"latest": true, "percent": 100}')]
    errors: list[FieldError] = []
    unknown = sorted(str(key) for key in item if key not in ENTRY_FIELDS)
    for key in unknown:
        errors.append(
            FieldError(
                f"{at}.{key[:64]}", f"unknown field; allowed fields: {', '.join(ENTRY_FIELDS)}"
            )
        )
    revision = item.get("revision")
    latest = item.get("latest", False)
    percent = item.get("percent", 0)
    tag = item.get("tag")
    if latest is None:
        latest = False
    if not isinstance(latest, bool):
        errors.append(FieldError(f"{at}.latest", "must be true or false"))
        latest = False
    if revision is not None:
        if not _is_int(revision):
            errors.append(FieldError(f"{at}.revision", "must be a revision number, e.g. 2"))
        elif latest:
            errors.append(FieldError(at, "set either revision or latest: true, not both"))
        elif revision not in revisions:
            known = ", ".join(str(number) for number in sorted(revisions)) or "none"
            errors.append(
                FieldError(
                    f"{at}.revision",
                    f"revision {revision} does not exist; this container has revisions {known}",
                )
            )
    elif not latest:
        errors.append(
            FieldError(at, 'needs a revision number or latest: true, e.g. {"revision": 2}')
        )
    if not _is_int(percent) or not 0 <= percent <= 100:
        errors.append(FieldError(f"{at}.percent", "must be a whole number from 0 to 100"))
        percent = 0
    if tag is not None:
        if not isinstance(tag, str):
            errors.append(FieldError(f"{at}.tag", "must be a string, e.g. preview"))
            tag = None
        elif TAG_PATTERN.match(tag) is None or TAG_SEPARATOR in tag:
            errors.append(
                FieldError(
                    f"{at}.tag",
                    "must be a DNS-1123 label: lowercase letters, digits or '-', starting and "
                    "ending with a letter or digit, without '---', e.g. preview",
                )
            )
            tag = None
        elif len(f"{tag}{TAG_SEPARATOR}{slug}") > MAX_HOST_LABEL:
            longest = MAX_HOST_LABEL - len(TAG_SEPARATOR) - len(slug)
            errors.append(
                FieldError(
                    f"{at}.tag",
                    f"must be at most {longest} characters (the URL label "
                    f"<tag>{TAG_SEPARATOR}<slug> is limited to {MAX_HOST_LABEL})",
                )
            )
            tag = None
    if errors:
        return None, errors
    return (
        TrafficEntry(
            percent=percent,
            revision=None if latest else revision,
            latest=latest,
            tag=tag,
        ),
        [],
    )


def parse_traffic(data: object, *, revisions: Collection[int], slug: str) -> list[TrafficEntry]:
    """Validate a desired traffic list; ValidationFailed names every offending field.

    Each entry names exactly one of ``revision`` (an existing revision number) or
    ``latest: true``; ``percent`` (default 0) is a whole number 0-100 and all of them sum to 100;
    ``tag`` is an optional DNS-1123 label, unique within the list.
    """
    if not isinstance(data, list):
        raise ValidationFailed(
            [
                FieldError(
                    "traffic",
                    'must be a list of targets, e.g. [{"latest": true, "percent": 100}]',
                )
            ]
        )
    if not data:
        raise ValidationFailed(
            [
                FieldError(
                    "traffic", 'needs at least one target, e.g. [{"latest": true, "percent": 100}]'
                )
            ]
        )
    if len(data) > MAX_TRAFFIC_ENTRIES:
        raise ValidationFailed(
            [FieldError("traffic", f"must have at most {MAX_TRAFFIC_ENTRIES} targets")]
        )
    errors: list[FieldError] = []
    entries: list[TrafficEntry] = []
    tags: dict[str, int] = {}
    for index, item in enumerate(data):
        entry, entry_errors = _entry_errors(index, item, revisions=revisions, slug=slug)
        errors.extend(entry_errors)
        if entry is None:
            continue
        entries.append(entry)
        if entry.tag is not None:
            if entry.tag in tags:
                errors.append(
                    FieldError(
                        f"traffic[{index}].tag",
                        f"tag {entry.tag!r} is already used by traffic[{tags[entry.tag]}]; "
                        "tags must be unique",
                    )
                )
            else:
                tags[entry.tag] = index
    if not errors:
        total = sum(entry.percent for entry in entries)
        if total != 100:
            errors.append(FieldError("traffic", f"percents must sum to 100 (they sum to {total})"))
    if errors:
        raise ValidationFailed(errors)
    return entries


def traffic_from_body(body: object) -> object:
    """The ``traffic`` list of a ``{"traffic": [...]}`` request body, for ``parse_traffic``."""
    if not isinstance(body, Mapping):
        raise ValidationFailed(
            [FieldError("body", 'must be a JSON object, e.g. {"traffic": [...]}')]
        )
    unknown = sorted(str(key) for key in body if key != "traffic")
    if unknown:
        raise ValidationFailed(
            [FieldError(key[:64], "unknown field; allowed fields: traffic") for key in unknown]
        )
    return body.get("traffic")


def traffic_of(container_traffic: list[dict[str, Any]] | None) -> list[TrafficEntry]:
    """The desired traffic stored on a container (None: 100 % to the latest ready revision)."""
    if container_traffic is None:
        return [LATEST_100]
    return [
        TrafficEntry(
            percent=int(item.get("percent") or 0),
            revision=item.get("revision"),
            latest=bool(item.get("latest", False)),
            tag=item.get("tag"),
        )
        for item in container_traffic
    ]


def traffic_json(entries: Sequence[TrafficEntry]) -> list[dict[str, Any]]:
    """The stored (JSON) form of desired traffic; ``traffic_of`` reads it back."""
    return [
        {
            "revision": entry.revision,
            "latest": entry.latest,
            "percent": entry.percent,
            "tag": entry.tag,
        }
        for entry in entries
    ]


def resolve_traffic(
    entries: Sequence[TrafficEntry], *, latest_ready: int | None
) -> list[ResolvedTarget]:
    """Replace ``latest`` by the newest ready revision (None while no revision is ready)."""
    return [
        ResolvedTarget(
            revision=latest_ready if entry.latest else entry.revision,
            percent=entry.percent,
            tag=entry.tag,
            latest=entry.latest,
        )
        for entry in entries
    ]


def routable_revisions(resolved: Sequence[ResolvedTarget]) -> set[int]:
    """Every revision that must stay available: it takes a share of traffic or has a tag URL
    (a tag at 0 % is a preview and still answers on its own URL)."""
    return {
        target.revision
        for target in resolved
        if target.revision is not None and (target.percent > 0 or target.tag is not None)
    }


def percent_by_revision(resolved: Sequence[ResolvedTarget]) -> dict[int, int]:
    """The share of the container's main URL each revision serves (targets summed)."""
    shares: dict[int, int] = {}
    for target in resolved:
        if target.revision is not None and target.percent > 0:
            shares[target.revision] = shares.get(target.revision, 0) + target.percent
    return shares


def tag_host(tag: str, slug: str, domain: str) -> str:
    """The host name of a tagged target: ``<tag>---<slug>.<domain>``."""
    return f"{tag}{TAG_SEPARATOR}{slug}.{domain}"


@dataclass(frozen=True)
class ObservedUrls:
    """The URLs a runtime that routes by itself reports for a container (Knative's
    ``status.url`` and the ``url`` of each tagged ``status.traffic`` entry), stored as
    ``containers.observed_urls`` and preferred by the views over the ones Dockyard derives."""

    url: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any] | None:
        """The stored form; None when the runtime reports no URL at all (yet)."""
        if self.url is None and not self.tags:
            return None
        return {"url": self.url, "tags": dict(sorted(self.tags.items()))}

    @classmethod
    def from_json(cls, stored: object) -> ObservedUrls:
        """Read the stored form back; anything malformed reads as no URL."""
        if not isinstance(stored, dict):
            return cls()
        url = stored.get("url")
        tags = stored.get("tags")
        return cls(
            url=url if isinstance(url, str) and url else None,
            tags={
                str(tag): value
                for tag, value in (tags.items() if isinstance(tags, dict) else ())
                if isinstance(value, str) and value
            },
        )
