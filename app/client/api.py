"""A small synchronous client of the REST ``/v1`` API (problem+json errors become
:class:`ApiError` with the server's own message)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from app.client.config import ClientConfig

Container = dict[str, Any]


UNAVAILABLE = frozenset({502, 503, 504})
"""Answers of the proxy in front of the API while the API is down or restarting."""


class _Unavailable(Exception):
    """The server is there but cannot answer right now: a follower retries."""


class ApiError(Exception):
    """The server refused or could not be reached; ``str()`` is the message for the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(
                f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict)
            )
        return str(body.get("detail") or body.get("title") or body)
    return str(body)


@dataclass(frozen=True)
class LogEvent:
    id: str
    timestamp: str
    line: str
    stream: str
    revision: int | None


class Api:
    def __init__(self, config: ClientConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        headers = {"Accept": "application/json"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self.http = httpx.Client(base_url=config.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the Dockyard server at {self.config.url}: {e}") from e
        if response.status_code == 401:
            raise ApiError(
                f"{_problem_text(response)} (token from {self.config.source}; run `dockyard "
                "login` or set DOCKYARD_TOKEN)",
                401,
            )
        if response.status_code >= 400:
            raise ApiError(_problem_text(response), response.status_code)
        return response

    # -- containers ------------------------------------------------------------------------------

    def list_containers(self, *, all_users: bool = False) -> list[Container]:
        items: list[Container] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "rowsPerPage": 100}
            if all_users:
                params["all"] = "true"
            body = self.request("GET", "/v1/containers", params=params).json()
            items.extend(body["items"])
            if len(items) >= body["total"] or not body["items"]:
                return items
            page += 1

    def get(self, container_id: str) -> Container:
        result: Container = self.request("GET", f"/v1/containers/{container_id}").json()
        return result

    def find(self, name_or_id: str) -> Container:
        """The container with this id, or else the caller's container with this name."""
        try:
            uuid.UUID(name_or_id)
        except ValueError:
            pass
        else:
            return self.get(name_or_id)
        for container in self.list_containers():
            if container["name"] == name_or_id:
                return container
        raise ApiError(f"no container named {name_or_id!r} (see `dockyard ls`)", 404)

    def find_by_name(self, name: str) -> Container | None:
        return next((c for c in self.list_containers() if c["name"] == name), None)

    def create(self, spec: dict[str, Any]) -> Container:
        result: Container = self.request("POST", "/v1/containers", json=spec).json()
        return result

    def update(self, container_id: str, spec: dict[str, Any]) -> Container:
        result: Container = self.request("PUT", f"/v1/containers/{container_id}", json=spec).json()
        return result

    def rollback(self, container_id: str, revision: int) -> Container:
        result: Container = self.request(
            "POST", f"/v1/containers/{container_id}/rollback", json={"revisionNumber": revision}
        ).json()
        return result

    def redeploy(self, container_id: str) -> Container:
        result: Container = self.request(
            "POST", f"/v1/containers/{container_id}/redeploy", json={}
        ).json()
        return result

    def delete(self, container_id: str) -> None:
        self.request("DELETE", f"/v1/containers/{container_id}")

    def revisions(self, container_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.request(
                "GET",
                f"/v1/containers/{container_id}/revisions",
                params={"page": page, "rowsPerPage": 100},
            ).json()
            items.extend(body["items"])
            if len(items) >= body["total"] or not body["items"]:
                return items
            page += 1

    # -- status events ---------------------------------------------------------------------------

    def status_events(
        self, container_id: str, *, retry_seconds: float = 1.0, give_up_after: float = 60.0
    ) -> Generator[Container, None, None]:
        """The container now and after each change (``GET /v1/containers/{id}/events``), each
        with ``phases``: its newest revision's deploy phases so far. A dropped connection is
        reopened (its first event is the state then); ends when the container is deleted."""
        down_since: float | None = None
        while True:
            try:
                with connect_sse(
                    self.http,
                    "GET",
                    f"/v1/containers/{container_id}/events",
                    headers={"Accept": "text/event-stream"},
                    timeout=httpx.Timeout(30.0, read=None),
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise ApiError(_problem_text(source.response), source.response.status_code)
                    down_since = None
                    for sse in source.iter_sse():
                        if sse.event == "end":
                            return
                        if sse.event == "reauthenticate":
                            raise ApiError(
                                f"the token expired while waiting (token from "
                                f"{self.config.source}; run `dockyard login`)",
                                401,
                            )
                        if sse.event == "status" and sse.data:
                            event: Container = sse.json()
                            yield event
            except (httpx.TransportError, SSEError) as e:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > give_up_after:
                    raise ApiError(
                        f"the status stream broke and the server stayed unreachable for "
                        f"{give_up_after:g}s: {e}"
                    ) from e
                time.sleep(retry_seconds)

    # -- logs ------------------------------------------------------------------------------------

    def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        since: str | None = None,
        retry_seconds: float = 1.0,
        give_up_after: float = 300.0,
    ) -> Iterator[LogEvent]:
        """Log events; with ``follow``, a dropped connection is reopened with ``Last-Event-ID``
        (the server resumes after the last line seen), until the server sends ``end`` or stays
        unreachable for ``give_up_after`` seconds."""
        last_id: str | None = None
        down_since: float | None = None
        while True:
            params: dict[str, Any] = {"follow": "true" if follow else "false"}
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            else:
                if tail is not None:
                    params["tail"] = tail
                if since:
                    params["since"] = since
            try:
                with connect_sse(
                    self.http,
                    "GET",
                    f"/v1/containers/{container_id}/logs",
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=None),
                ) as source:
                    status = source.response.status_code
                    if follow and status in UNAVAILABLE:
                        # The proxy in front answers while the API behind it restarts.
                        raise _Unavailable(f"the server answered {status}")
                    if status >= 400:
                        source.response.read()
                        raise ApiError(_problem_text(source.response), status)
                    down_since = None
                    for sse in source.iter_sse():
                        if sse.event == "end":
                            return
                        if sse.event == "dropped":
                            dropped = sse.json().get("dropped", "?")
                            yield LogEvent(
                                last_id or "", "", f"[{dropped} lines dropped]", "", None
                            )
                            continue
                        if sse.event not in ("", "message") or not sse.data:
                            continue
                        data = sse.json()
                        if sse.id:
                            last_id = sse.id
                        yield LogEvent(
                            sse.id,
                            str(data.get("timestamp", "")),
                            str(data.get("line", "")),
                            str(data.get("stream", "")),
                            data.get("revision"),
                        )
            except (httpx.TransportError, SSEError, _Unavailable) as e:
                if not follow:
                    raise ApiError(f"the log stream broke: {e}") from e
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > give_up_after:
                    raise ApiError(
                        f"the log stream broke and the server stayed unreachable for "
                        f"{give_up_after:g}s: {e}"
                    ) from e
                time.sleep(retry_seconds)
                continue
            if not follow:
                return
