"""Validation results kept per document text (app.gql.validation)."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.gql.validation as validation
from app.gql.schema import DOCUMENT_CACHE_SIZE
from tests.gql.test_graphql import post

Header = Callable[..., dict[str, str]]


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The document texts validated for real (not answered from the cache)."""
    seen: list[str] = []
    real = validation.validate_document

    def counting(schema: Any, document: Any, rules: Any) -> Any:
        source = document.loc.source.body if document.loc is not None else ""
        seen.append(source)
        return real(schema, document, rules)

    monkeypatch.setattr(validation, "validate_document", counting)
    return seen


def test_a_document_text_is_validated_once(
    client: TestClient, auth: Header, validations: list[str]
) -> None:
    marker = uuid.uuid4().hex  # a text no earlier test sent
    query = f"query L{marker} {{ containers {{ total }} }}"
    for _ in range(3):
        assert post(client, query, auth())["data"]["containers"]["total"] == 0
    assert validations == [query]


def test_an_invalid_document_is_refused_every_time_with_the_same_errors(
    client: TestClient, auth: Header, validations: list[str]
) -> None:
    query = f"query Bad{uuid.uuid4().hex} {{ containers {{ nosuchfield }} }}"
    answers = [post(client, query, auth()) for _ in range(3)]
    assert len(validations) == 1
    for answer in answers:
        assert answer["data"] is None
        assert "nosuchfield" in answer["errors"][0]["message"]
    assert answers[0] == answers[1] == answers[2]


def test_a_different_text_of_the_same_meaning_is_validated_on_its_own(
    client: TestClient, auth: Header, validations: list[str]
) -> None:
    marker = uuid.uuid4().hex
    first = f"query W{marker} {{ containers {{ total }} }}"
    second = f"query W{marker} {{ containers {{  total }} }}"
    post(client, first, auth())
    post(client, second, auth())
    assert validations == [first, second]


def test_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch, client: TestClient, auth: Header
) -> None:
    monkeypatch.setattr(validation, "_RESULTS", OrderedDict())
    for n in range(DOCUMENT_CACHE_SIZE + 5):
        post(client, f"query Q{n} {{ containers {{ total }} }}", auth())
    assert len(validation._RESULTS) == DOCUMENT_CACHE_SIZE
    assert [key[1] for key in validation._RESULTS][-1] == (
        f"query Q{DOCUMENT_CACHE_SIZE + 4} {{ containers {{ total }} }}"
    )
