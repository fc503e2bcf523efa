"""Validation results kept per document *text*.

Strawberry's ``ValidationCache`` is an ``lru_cache`` over ``validate_document(schema, document,
rules)``: its key holds the parsed ``DocumentNode``, and graphql-core's AST nodes are dataclasses
whose hash walks the whole tree, every node and location, on every lookup (~55 nodes for the
console's container list: a tenth of a cached list query's CPU in a profile). The document is a
function of its text, which Python hashes once per string, so this cache keys on the text and
the validation rule classes instead (the rules are built once, ``app.gql.schema``), and
validates the parsed document only on a miss, as Strawberry does (its ``validate_document``).
A request without a text (none today) is validated uncached. Bounded: when full, the least
recently used entry goes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

from graphql import GraphQLError, GraphQLSchema
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

Key = tuple[GraphQLSchema, str, tuple[type, ...]]

_RESULTS: OrderedDict[Key, list[GraphQLError]] = OrderedDict()
"""Shared by every request (an extension instance lives for one)."""
_LOCK = threading.Lock()


class TextValidationCache(SchemaExtension):
    """Skip validating a document text seen before with the same schema and rules."""

    def __init__(self, *, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        assert document is not None  # validation runs only on a parsed document
        rules = tuple(context.validation_rules)
        schema = context.schema._schema
        key = (schema, context.query, rules) if context.query is not None else None
        errors = self._cached(key)
        if errors is None:
            errors = validate_document(schema, document, rules)
            self._store(key, errors)
        context.pre_execution_errors = errors
        yield

    def _cached(self, key: Key | None) -> list[GraphQLError] | None:
        if key is None:
            return None
        with _LOCK:
            errors = _RESULTS.get(key)
            if errors is not None:
                _RESULTS.move_to_end(key)
            return errors

    def _store(self, key: Key | None, errors: list[GraphQLError]) -> None:
        if key is None:
            return
        with _LOCK:
            _RESULTS[key] = errors
            while len(_RESULTS) > self.maxsize:
                _RESULTS.popitem(last=False)
