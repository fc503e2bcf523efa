"""The published contracts (``graphql/``, ``rest/``) are what the code serves.

``graphql/`` and ``rest/`` hold data only: a ``graphql`` package would shadow graphql-core.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from graphql import FieldNode, OperationDefinitionNode, parse, validate
from strawberry.printer import print_schema

from app.gql.schema import schema
from app.server import openapi_json
from tests.support.bodies import HELLO

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "graphql" / "schema.graphql"
OPENAPI_FILE = ROOT / "rest" / "openapi.json"
OPERATIONS = sorted((ROOT / "graphql" / "operations").glob("*.graphql"))
REGENERATE_SCHEMA = "strawberry export-schema app.gql.schema:schema --output graphql/schema.graphql"
REGENERATE_OPENAPI = "dockyard openapi --output rest/openapi.json"
Header = Callable[..., dict[str, str]]


def test_exported_graphql_schema_is_current() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == print_schema(schema) + "\n", (
        f"graphql/schema.graphql is stale; regenerate it with: {REGENERATE_SCHEMA}"
    )


def test_exported_openapi_is_current() -> None:
    committed = OPENAPI_FILE.read_text(encoding="utf-8")
    assert committed == openapi_json(), (
        f"rest/openapi.json is stale; regenerate it with: {REGENERATE_OPENAPI}"
    )
    paths = json.loads(committed)["paths"]
    assert "/v1/containers" in paths
    assert not any(path.startswith("/graphql") for path in paths)


@pytest.mark.parametrize("folder", ["graphql", "rest"])
def test_contract_folders_hold_no_python(folder: str) -> None:
    assert not list((ROOT / folder).rglob("*.py")), f"{folder}/ is data only"


def operation(path: Path) -> OperationDefinitionNode:
    (definition,) = parse(path.read_text(encoding="utf-8")).definitions
    assert isinstance(definition, OperationDefinitionNode)
    return definition


@pytest.mark.parametrize("path", OPERATIONS, ids=lambda path: path.stem)
def test_operation_documents_are_valid(path: Path) -> None:
    document = parse(path.read_text(encoding="utf-8"))
    assert validate(schema._schema, document) == []
    (field,) = operation(path).selection_set.selections
    assert isinstance(field, FieldNode)
    assert field.name.value == path.stem, "one root field per file, named after it"


def test_every_root_field_has_an_example() -> None:
    examples = {path.stem for path in OPERATIONS}
    roots = [schema._schema.query_type, schema._schema.mutation_type]
    roots.append(schema._schema.subscription_type)
    fields = {name for root in roots if root is not None for name in root.fields}
    assert fields == examples


def test_queries_and_mutations_execute(client: TestClient, auth: Header) -> None:
    documents = {path.stem: path.read_text(encoding="utf-8") for path in OPERATIONS}
    headers = auth("alice")

    def run(name: str, **variables: Any) -> Any:
        response = client.post(
            "/graphql", json={"query": documents[name], "variables": variables}, headers=headers
        )
        result = response.json()
        assert "errors" not in result, (name, result)
        return result["data"][name]

    container_id = run("createContainer", input=HELLO)["id"]
    assert run("container", id=container_id)["env"] == {"FOO": "bar"}
    updated = run("updateContainer", id=container_id, input={"image": "nginxdemos/hello:2"})
    assert updated["revision"] == 2
    assert run("containers")["items"][0]["revisions"][0]["revisionNumber"] == 2
    assert run("containerRevisions", id=container_id)["total"] == 2
    assert run("rollbackContainer", id=container_id, revisionNumber=1)["revision"] == 3
    split = [{"revision": 1, "percent": 90}, {"latest": True, "percent": 10, "tag": "canary"}]
    routed = run("setTraffic", id=container_id, traffic=split)
    assert [target["percent"] for target in routed["traffic"]] == [90, 10]
    assert run("redeployContainer", id=container_id)["revision"] == 4
    assert run("gpuModels")["total"] > 0
    assert run("viewer") == {"subject": "alice", "roles": []}
    assert run("deleteContainer", id=container_id) == container_id
