"""GraphQL operations in the server's metrics, by operation name (Strawberry extension).

The HTTP middleware sees every GraphQL request as ``POST /graphql``; this extension adds what an
operator needs to tell a slow ``containers`` poll from a slow ``createContainer``. Names come
from the client's document (bounded in length; anonymous operations are ``anonymous``), so the
number of series stays what the clients make of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from strawberry.extensions import SchemaExtension

MAX_NAME = 64


class OperationMetrics(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        context = self.execution_context.context
        metrics = getattr(getattr(context, "state", None), "metrics", None)
        if metrics is None:
            return
        name = (self.execution_context.operation_name or "anonymous")[:MAX_NAME]
        try:
            kind = self.execution_context.operation_type.value
        except RuntimeError:  # the document did not parse: no operation type to speak of
            kind = "invalid"
        result = self.execution_context.result
        outcome = "error" if result is not None and getattr(result, "errors", None) else "ok"
        metrics.graphql_operations.labels(name, kind, outcome).inc()
        if kind != "subscription":
            metrics.graphql_latency.labels(name, kind).observe(time.perf_counter() - start)
