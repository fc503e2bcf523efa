"""Two clients with the same methods, one per transport, for behaviour tests run over both.

Each method returns an ``Outcome``: the JSON data (REST body or GraphQL field value) or the error
as its stable code plus the offending fields, the part both APIs promise to agree on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi.testclient import TestClient

CONTAINER_FIELDS = """
    id name createdBy image cpu ram gpu ephemeralStorage command arguments env port
    dateCreated dateUpdated status statusReason urls desiredGPUs revision readyRevision
    scaling { minInstances maxInstances concurrency scaleToZeroAfterSeconds }
    traffic { revision latest percent tag url }
    probes
"""
REVISION_FIELDS = """
    containerID revisionNumber image dateCreated createdBy spec
    instancesDesired instancesReady servingState stateReason stateMessage trafficPercent
    phases { phase at durationMs reason }
"""


@dataclass(frozen=True)
class Outcome:
    data: Any = None
    code: str | None = None
    fields: list[dict[str, str]] = field(default_factory=list)


class ApiClient(Protocol):
    name: str

    def create(self, body: Any) -> Outcome: ...
    def get(self, container_id: str) -> Outcome: ...
    def list(
        self, *, page: int = 1, rows_per_page: int = 10, all: bool = False, after: str | None = None
    ) -> Outcome: ...
    def update(self, container_id: str, body: Any) -> Outcome: ...
    def revisions(
        self, container_id: str, *, page: int = 1, rows_per_page: int = 10
    ) -> Outcome: ...
    def rollback(self, container_id: str, revision_number: int) -> Outcome: ...
    def set_traffic(self, container_id: str, traffic: Any) -> Outcome: ...
    def redeploy(self, container_id: str) -> Outcome: ...
    def delete(self, container_id: str) -> Outcome: ...
    def gpu_models(self) -> Outcome: ...


class RestClient:
    name = "rest"

    def __init__(self, http: TestClient, headers: dict[str, str]) -> None:
        self.http = http
        self.headers = headers

    def _outcome(self, response: Any) -> Outcome:
        if response.status_code >= 400:
            body = response.json()
            return Outcome(code=body["code"], fields=body.get("errors", []))
        return Outcome(data=response.json() if response.status_code != 204 else None)

    def create(self, body: Any) -> Outcome:
        return self._outcome(self.http.post("/v1/containers", json=body, headers=self.headers))

    def get(self, container_id: str) -> Outcome:
        return self._outcome(self.http.get(f"/v1/containers/{container_id}", headers=self.headers))

    def list(
        self, *, page: int = 1, rows_per_page: int = 10, all: bool = False, after: str | None = None
    ) -> Outcome:
        params: dict[str, Any] = {"page": page, "rowsPerPage": rows_per_page}
        params["all"] = str(all).lower()
        if after is not None:
            params["after"] = after
        return self._outcome(self.http.get("/v1/containers", params=params, headers=self.headers))

    def update(self, container_id: str, body: Any) -> Outcome:
        return self._outcome(
            self.http.put(f"/v1/containers/{container_id}", json=body, headers=self.headers)
        )

    def revisions(self, container_id: str, *, page: int = 1, rows_per_page: int = 10) -> Outcome:
        return self._outcome(
            self.http.get(
                f"/v1/containers/{container_id}/revisions",
                params={"page": page, "rowsPerPage": rows_per_page},
                headers=self.headers,
            )
        )

    def rollback(self, container_id: str, revision_number: int) -> Outcome:
        return self._outcome(
            self.http.post(
                f"/v1/containers/{container_id}/rollback",
                json={"revisionNumber": revision_number},
                headers=self.headers,
            )
        )

    def set_traffic(self, container_id: str, traffic: Any) -> Outcome:
        return self._outcome(
            self.http.put(
                f"/v1/containers/{container_id}/traffic",
                json={"traffic": traffic},
                headers=self.headers,
            )
        )

    def redeploy(self, container_id: str) -> Outcome:
        return self._outcome(
            self.http.post(f"/v1/containers/{container_id}/redeploy", headers=self.headers)
        )

    def delete(self, container_id: str) -> Outcome:
        return self._outcome(
            self.http.delete(f"/v1/containers/{container_id}", headers=self.headers)
        )

    def gpu_models(self) -> Outcome:
        return self._outcome(self.http.get("/v1/gpu-models", headers=self.headers))


class GraphQLClient:
    name = "graphql"

    def __init__(self, http: TestClient, headers: dict[str, str]) -> None:
        self.http = http
        self.headers = headers

    def execute(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(
            "/graphql", json={"query": document, "variables": variables}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def _outcome(self, document: str, variables: dict[str, Any] | None = None) -> Outcome:
        result = self.execute(document, variables)
        if result.get("errors"):
            assert len(result["errors"]) == 1, result
            extensions = result["errors"][0].get("extensions", {})
            return Outcome(code=extensions.get("code"), fields=extensions.get("fields", []))
        (value,) = result["data"].values()
        return Outcome(data=value)

    def create(self, body: Any) -> Outcome:
        return self._outcome(
            f"mutation($input: CreateContainerInput!) {{ createContainer(input: $input) "
            f"{{ {CONTAINER_FIELDS} }} }}",
            {"input": body},
        )

    def get(self, container_id: str) -> Outcome:
        return self._outcome(
            f"query($id: ID!) {{ container(id: $id) {{ {CONTAINER_FIELDS} }} }}",
            {"id": container_id},
        )

    def list(
        self, *, page: int = 1, rows_per_page: int = 10, all: bool = False, after: str | None = None
    ) -> Outcome:
        return self._outcome(
            "query($page: Int!, $rows: Int!, $all: Boolean!, $after: String) { "
            "containers(page: $page, rowsPerPage: $rows, all: $all, after: $after) "
            f"{{ items {{ {CONTAINER_FIELDS} }} total page rowsPerPage nextCursor }} }}",
            {"page": page, "rows": rows_per_page, "all": all, "after": after},
        )

    def update(self, container_id: str, body: Any) -> Outcome:
        return self._outcome(
            "mutation($id: ID!, $input: UpdateContainerInput!) { "
            f"updateContainer(id: $id, input: $input) {{ {CONTAINER_FIELDS} }} }}",
            {"id": container_id, "input": body},
        )

    def revisions(self, container_id: str, *, page: int = 1, rows_per_page: int = 10) -> Outcome:
        return self._outcome(
            "query($id: ID!, $page: Int!, $rows: Int!) { "
            "containerRevisions(id: $id, page: $page, rowsPerPage: $rows) "
            f"{{ items {{ {REVISION_FIELDS} }} total page rowsPerPage }} }}",
            {"id": container_id, "page": page, "rows": rows_per_page},
        )

    def rollback(self, container_id: str, revision_number: int) -> Outcome:
        return self._outcome(
            "mutation($id: ID!, $n: Int!) { "
            f"rollbackContainer(id: $id, revisionNumber: $n) {{ {CONTAINER_FIELDS} }} }}",
            {"id": container_id, "n": revision_number},
        )

    def set_traffic(self, container_id: str, traffic: Any) -> Outcome:
        return self._outcome(
            "mutation($id: ID!, $traffic: [TrafficTargetInput!]!) { "
            f"setTraffic(id: $id, traffic: $traffic) {{ {CONTAINER_FIELDS} }} }}",
            {"id": container_id, "traffic": traffic},
        )

    def redeploy(self, container_id: str) -> Outcome:
        return self._outcome(
            f"mutation($id: ID!) {{ redeployContainer(id: $id) {{ {CONTAINER_FIELDS} }} }}",
            {"id": container_id},
        )

    def delete(self, container_id: str) -> Outcome:
        outcome = self._outcome(
            "mutation($id: ID!) { deleteContainer(id: $id) }", {"id": container_id}
        )
        if outcome.code is None:
            assert outcome.data == container_id
            return Outcome()
        return outcome

    def gpu_models(self) -> Outcome:
        return self._outcome("{ gpuModels { items { code name } total page rowsPerPage } }")


CLIENTS: dict[str, type[RestClient | GraphQLClient]] = {
    "rest": RestClient,
    "graphql": GraphQLClient,
}


def ws_subscribe(
    ws: Any, token: str, query: str, variables: dict[str, Any], *, message: str = "subscribe"
) -> None:
    """Open a GraphQL WebSocket session authenticated by ``token`` in ``connection_init``, check
    it is acknowledged, and start operation "1": ``query`` with ``variables``. ``message`` is
    ``"start"`` on the legacy graphql-ws protocol."""
    ws.send_json({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
    ack = ws.receive_json()
    assert ack["type"] == "connection_ack", ack
    if message == "subscribe":  # graphql-transport-ws acknowledges with nothing else
        assert ack == {"type": "connection_ack"}
    ws.send_json({"type": message, "id": "1", "payload": {"query": query, "variables": variables}})
