"""The /v1 routes as documented: shapes, status codes, partial updates, revisions, paging."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.bodies import HELLO

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "name": (str,),
    "createdBy": (str,),
    "image": (str,),
    "cpu": (int, float),
    "ram": (str,),
    "gpu": (int,),
    "ephemeralStorage": (str,),
    "command": (list, type(None)),
    "arguments": (list, type(None)),
    "env": (dict,),
    "port": (str,),
    "dateCreated": (str,),
    "dateUpdated": (str,),
    "status": (str,),
    "urls": (list, type(None)),
    "desiredGPUs": (list, type(None)),
}


def assert_container_shape(body: dict[str, Any]) -> None:
    for field, types in SPEC_TYPES.items():
        assert field in body, field
        assert isinstance(body[field], types), (field, body[field])
    assert not isinstance(body["gpu"], bool)
    assert RFC3339_Z.match(body["dateCreated"]) and RFC3339_Z.match(body["dateUpdated"])
    assert body["status"] in ("deploying", "deployed", "failed")
    uuid.UUID(body["id"])


def create(client: TestClient, auth: Any, user: str = "alice", **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/containers", json={**HELLO, **changes}, headers=auth(user))
    assert response.status_code == 201, response.text
    return response.json()


def test_create_returns_201_with_every_documented_field(client: TestClient, auth: Any) -> None:
    body = create(client, auth)
    assert_container_shape(body)
    assert body["name"] == "hello-world"
    assert body["createdBy"] == "alice"
    assert body["cpu"] == 1
    assert body["ram"] == "512Mi"
    assert body["ephemeralStorage"] == "10Gi"
    assert body["env"] == {"FOO": "bar"}
    assert body["port"] == "80"
    assert body["command"] is None and body["arguments"] is None
    assert body["status"] == "deploying"
    assert body["dateUpdated"] == body["dateCreated"]
    assert body["desiredGPUs"] == []
    (url,) = body["urls"]
    assert re.match(r"^[a-z2-7]{26}\.localhost:8000$", url), url


def test_create_applies_defaults_and_accepts_numeric_port(client: TestClient, auth: Any) -> None:
    response = client.post(
        "/v1/containers",
        json={"name": "tiny", "image": "busybox:1.36", "port": 9000},
        headers=auth(),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["port"] == "9000"
    assert (body["cpu"], body["ram"], body["gpu"], body["ephemeralStorage"]) == (
        1,
        "512Mi",
        0,
        "1Gi",
    )


def test_get_list_and_newest_first(client: TestClient, auth: Any) -> None:
    first = create(client, auth, name="first")
    second = create(client, auth, name="second")
    create(client, auth, "bob", name="bobs")
    got = client.get(f"/v1/containers/{first['id']}", headers=auth())
    assert got.status_code == 200
    assert got.json() == first
    listing = client.get("/v1/containers", headers=auth()).json()
    assert listing["total"] == 2 and listing["page"] == 1 and listing["rowsPerPage"] == 10
    assert [item["id"] for item in listing["items"]] == [second["id"], first["id"]]
    for item in listing["items"]:
        assert_container_shape(item)


def test_paging(client: TestClient, auth: Any) -> None:
    ids = [create(client, auth, name=f"svc-{n}")["id"] for n in range(5)]
    page2 = client.get("/v1/containers?page=2&rowsPerPage=2", headers=auth()).json()
    assert page2["total"] == 5 and page2["page"] == 2 and page2["rowsPerPage"] == 2
    assert [item["id"] for item in page2["items"]] == [ids[2], ids[1]]
    past = client.get("/v1/containers?page=9&rowsPerPage=2", headers=auth()).json()
    assert past["items"] == [] and past["total"] == 5
    for query, field in [
        ("page=0", "page"),
        ("rowsPerPage=101", "rowsPerPage"),
        ("rowsPerPage=0", "rowsPerPage"),
        ("page=x", "page"),
    ]:
        response = client.get(f"/v1/containers?{query}", headers=auth())
        assert response.status_code == 422, query
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in response.json()["errors"]] == [field]


def test_admin_lists_everyone_with_all(client: TestClient, auth: Any) -> None:
    create(client, auth, "alice", name="a")
    create(client, auth, "bob", name="b")
    everyone = client.get("/v1/containers?all=true", headers=auth("root", "ADMIN")).json()
    assert everyone["total"] == 2
    own = client.get("/v1/containers", headers=auth("root", "ADMIN")).json()
    assert own["total"] == 0
    refused = client.get("/v1/containers?all=true", headers=auth("alice"))
    assert refused.status_code == 403
    assert refused.json()["code"] == "FORBIDDEN"


def test_put_is_a_partial_update_that_writes_a_revision(client: TestClient, auth: Any) -> None:
    created = create(client, auth, command=["/bin/server"], env={"FOO": "bar", "KEEP": "no"})
    response = client.put(
        f"/v1/containers/{created['id']}",
        json={"image": "nginxdemos/hello:updated", "env": {"FOO": "updated-bar"}},
        headers=auth(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_container_shape(body)
    assert body["image"] == "nginxdemos/hello:updated"
    assert body["env"] == {"FOO": "updated-bar"}  # env replaces the whole map
    assert body["command"] == ["/bin/server"]  # absent fields are kept
    assert (body["cpu"], body["ram"], body["port"]) == (1, "512Mi", "80")
    assert body["dateCreated"] == created["dateCreated"]
    assert body["status"] == "deploying"
    assert body["urls"] == created["urls"]
    cleared = client.put(f"/v1/containers/{created['id']}", json={"command": None}, headers=auth())
    assert cleared.json()["command"] is None

    revisions = client.get(f"/v1/containers/{created['id']}/revisions", headers=auth()).json()
    assert revisions["total"] == 3 and revisions["page"] == 1 and revisions["rowsPerPage"] == 10
    assert [r["revisionNumber"] for r in revisions["items"]] == [3, 2, 1]
    assert [r["image"] for r in revisions["items"]] == [
        "nginxdemos/hello:updated",
        "nginxdemos/hello:updated",
        "nginxdemos/hello:latest",
    ]
    for item in revisions["items"]:
        assert item["containerID"] == created["id"]
        assert RFC3339_Z.match(item["dateCreated"])
    # a revision is an immutable snapshot of the whole spec
    assert revisions["items"][2]["spec"]["env"] == {"FOO": "bar", "KEEP": "no"}
    assert revisions["items"][0]["spec"]["command"] is None


def test_rejected_update_changes_nothing(client: TestClient, auth: Any) -> None:
    created = create(client, auth)
    response = client.put(
        f"/v1/containers/{created['id']}", json={"image": "nginx", "cpu": 2}, headers=auth()
    )
    assert response.status_code == 422
    assert client.get(f"/v1/containers/{created['id']}", headers=auth()).json() == created
    revisions = client.get(f"/v1/containers/{created['id']}/revisions", headers=auth()).json()
    assert revisions["total"] == 1


def test_rollback_writes_a_new_revision_with_the_old_spec(client: TestClient, auth: Any) -> None:
    created = create(client, auth)
    client.put(f"/v1/containers/{created['id']}", json={"image": "x:2", "cpu": 2}, headers=auth())
    response = client.post(
        f"/v1/containers/{created['id']}/rollback", json={"revisionNumber": 1}, headers=auth()
    )
    assert response.status_code == 200, response.text
    assert response.json()["image"] == HELLO["image"] and response.json()["cpu"] == 1
    assert response.json()["revision"] == 3
    missing = client.post(
        f"/v1/containers/{created['id']}/rollback", json={"revisionNumber": 9}, headers=auth()
    )
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "revisionNumber"
    wrong = client.post(
        f"/v1/containers/{created['id']}/rollback", json={"revisionNumber": "1"}, headers=auth()
    )
    assert wrong.status_code == 422


def test_redeploy_writes_a_new_revision_with_the_same_spec(
    client: TestClient, auth: Any
) -> None:
    created = create(client, auth)
    response = client.post(f"/v1/containers/{created['id']}/redeploy", headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["revision"] == 2 and body["status"] == "deploying"
    assert body["image"] == created["image"] and body["env"] == created["env"]
    revisions = client.get(f"/v1/containers/{created['id']}/revisions", headers=auth()).json()
    assert revisions["items"][0]["spec"] == revisions["items"][1]["spec"]
    other = client.post(f"/v1/containers/{created['id']}/redeploy", headers=auth("bob"))
    assert other.status_code == 403


def test_delete_then_get_is_404(client: TestClient, auth: Any) -> None:
    created = create(client, auth)
    response = client.delete(f"/v1/containers/{created['id']}", headers=auth())
    assert response.status_code == 204 and response.content == b""
    assert client.get(f"/v1/containers/{created['id']}", headers=auth()).status_code == 404
    assert client.delete(f"/v1/containers/{created['id']}", headers=auth()).status_code == 404
    assert client.get("/v1/containers", headers=auth()).json()["total"] == 0
    # the name is free again
    create(client, auth)


def test_names_are_unique_per_owner(client: TestClient, auth: Any) -> None:
    create(client, auth)
    again = client.post("/v1/containers", json=HELLO, headers=auth())
    assert again.status_code == 409
    assert again.json()["code"] == "CONFLICT" and "name" in again.json()["detail"]
    create(client, auth, "bob")  # another owner may use the same name


def test_gpu_models(client: TestClient, auth: Any) -> None:
    body = client.get("/v1/gpu-models", headers=auth()).json()
    assert body["total"] == 25 and body["page"] == 1 and body["rowsPerPage"] == 100
    assert body["items"][0] == {"code": "h100", "name": "Nvidia h100"}
    assert {"code": "3060ti", "name": "Nvidia rtx-3060-ti"} in body["items"]
    assert len(body["items"]) == 25


def test_desired_gpus_by_code_or_name(client: TestClient, auth: Any) -> None:
    body = create(client, auth, gpu=1, desiredGPUs=["a100", "Nvidia tesla-p4"])
    assert body["desiredGPUs"] == ["Nvidia a100", "Nvidia tesla-p4"]
    assert body["gpu"] == 1


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/v1/containers/{id}"),
        ("put", "/v1/containers/{id}"),
        ("delete", "/v1/containers/{id}"),
        ("get", "/v1/containers/{id}/revisions"),
        ("post", "/v1/containers/{id}/rollback"),
        ("post", "/v1/containers/{id}/redeploy"),
    ],
)
def test_unknown_and_malformed_ids_are_404(
    client: TestClient, auth: Any, method: str, path: str
) -> None:
    for container_id in (str(uuid.uuid4()), "not-a-uuid"):
        kwargs: dict[str, Any] = {"headers": auth()}
        if method in ("put", "post"):
            kwargs["json"] = {"revisionNumber": 1} if "rollback" in path else {"cpu": 2}
        response = getattr(client, method)(path.format(id=container_id), **kwargs)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "NOT_FOUND"


def test_concurrent_puts_get_contiguous_revisions(client: TestClient, auth: Any) -> None:
    created = create(client, auth)
    headers = auth()

    def put(n: int) -> int:
        return client.put(
            f"/v1/containers/{created['id']}", json={"env": {"N": str(n)}}, headers=headers
        ).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(put, range(16)))
    assert statuses == [200] * 16
    revisions = client.get(
        f"/v1/containers/{created['id']}/revisions?rowsPerPage=100", headers=headers
    ).json()
    assert sorted(r["revisionNumber"] for r in revisions["items"]) == list(range(1, 18))
    envs = {r["spec"]["env"]["N"] for r in revisions["items"] if r["revisionNumber"] > 1}
    assert envs == {str(n) for n in range(16)}
    final = client.get(f"/v1/containers/{created['id']}", headers=headers).json()
    assert final["revision"] == 17
    assert final["env"] == revisions["items"][0]["spec"]["env"]
