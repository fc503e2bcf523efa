"""graphql-core's executor, with the completed items of a list kept per selection.

A console polls ``containers { items { … } }`` with the same document again and again. The list
service hands out the same ``Container`` object for an unchanged row (``Container.from_listed_view``
keeps one per cached view, and a view is keyed on the whole row as read), yet graphql-core
resolves and completes each of its ~20 fields on every request: ~200 field resolutions for a
10-item page, more than half of a list query's cost.

``CachingExecutionContext`` (Strawberry's execution context with one method more) remembers, on
such an object, the completed value (the JSON-ready dict) per *selection signature*: the type
name and the fields selected (response key, field name, nested selection), nothing else. A
value is cached only when it is a pure function of the object and that signature:

- only objects that carry a ``completed_selections`` dict (listed containers; objects built per
  request never do), so the cache lives and dies with the object and its view — no key by ``id``,
  nothing to expire: a changed row is another view, another object;
- only selections of plain fields (Strawberry's attribute-reading resolver, marked
  ``_is_default``), recursively, on object types: no field with arguments or a resolver of its
  own (``phases``, ``revisions`` read the database), no directives (``@include(if: $v)``
  depends on variables), no fragments, no abstract types;
- only when the completion raised nothing, recorded no error and finished synchronously;
- only when no extension wraps field resolution (a middleware would be skipped).

The signature says nothing about the caller: an item reaches a caller only through the list
service, which authorizes every row; the cached dict is that row's rendering, the same for any
caller given the row. At most ``MAX_SELECTIONS`` signatures are kept per object (a client
inventing new selections stops being cached for that object, it is never wrong).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from typing import Any

from graphql import (
    FieldNode,
    GraphQLObjectType,
    GraphQLResolveInfo,
    SelectionSetNode,
    get_named_type,
    is_object_type,
)
from graphql.pyutils import Path
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

MAX_SELECTIONS = 8
"""Selection signatures remembered per object."""
MAX_SIGNATURES = 1024
"""Distinct signatures interned (beyond that, new selections are completed without the cache)."""

Signature = tuple[Hashable, ...]
_INTERNED: dict[Signature, int] = {}
"""A small number per distinct signature: the per-object dicts are keyed by it, so an item's
lookup hashes an int instead of a nested tuple."""


_NUMBERS = itertools.count()


def signature_number(signature: Signature | None) -> int | None:
    if signature is None:
        return None
    number = _INTERNED.get(signature)
    if number is None and len(_INTERNED) < MAX_SIGNATURES:
        # setdefault and next() are atomic: two threads never get two numbers for one signature
        number = _INTERNED.setdefault(signature, next(_NUMBERS))
    return number


def selection_signature(
    parent_type: GraphQLObjectType, selection_sets: Sequence[SelectionSetNode | None]
) -> Signature | None:
    """What the selection reads of an object, as a hashable value; ``None`` when completing it
    may depend on anything but the object (arguments, directives, fragments, resolvers)."""
    fields: list[Hashable] = [parent_type.name]
    for selection_set in selection_sets:
        if selection_set is None:
            return None
        for selection in selection_set.selections:
            if not isinstance(selection, FieldNode) or selection.directives or selection.arguments:
                return None
            name = selection.name.value
            key = selection.alias.value if selection.alias is not None else name
            if name == "__typename":
                fields.append((key, name, None))
                continue
            field = parent_type.fields.get(name)
            if field is None or not getattr(field.resolve, "_is_default", False):
                return None
            named = get_named_type(field.type)
            nested: Signature | None = None
            if selection.selection_set is not None:
                if not is_object_type(named):
                    return None
                nested = selection_signature(named, [selection.selection_set])
                if nested is None:
                    return None
            fields.append((key, name, nested))
    return tuple(fields)


class CachingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context; completed objects are reused as the module says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per execution: the signature of each field-details list met (the list object is
        # pinned in the value, so its id is not reused while this execution runs).
        self._signatures: dict[int, tuple[object, int | None]] = {}
        manager = self.middleware_manager
        self._plain_resolvers = manager is None or not getattr(manager, "middlewares", None)

    def _signature(self, return_type: GraphQLObjectType, field_details_list: Any) -> int | None:
        known = self._signatures.get(id(field_details_list))
        if known is not None and known[0] is field_details_list:
            return known[1]
        signature = None
        if all(
            details.defer_usage is None and details.fragment_variable_values is None
            for details in field_details_list
        ):
            signature = signature_number(
                selection_signature(
                    return_type, [details.node.selection_set for details in field_details_list]
                )
            )
        self._signatures[id(field_details_list)] = (field_details_list, signature)
        return signature

    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: Any,
        info: GraphQLResolveInfo[Any],
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        completed = getattr(result, "completed_selections", None)
        if type(completed) is not dict or not self._plain_resolvers:
            return super().complete_object_value(
                return_type, field_details_list, info, path, result, position_context
            )
        signature = self._signature(return_type, field_details_list)
        if signature is None:
            return super().complete_object_value(
                return_type, field_details_list, info, path, result, position_context
            )
        value = completed.get(signature)
        if value is not None:
            return value
        errors = len(self.collected_errors.errors)
        value = super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )
        if (
            isinstance(value, dict)
            and len(self.collected_errors.errors) == errors
            and len(completed) < MAX_SELECTIONS
        ):
            completed[signature] = value
        return value
