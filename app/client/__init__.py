"""The ``dockyard`` client commands (login, deploy, ls, status, revisions, rollback, redeploy, rm,
logs): a terminal front end that speaks only the public REST API of a Dockyard server.

Why REST and not GraphQL: ``/v1`` is the documented, versioned contract (the Container Service
API), every operation the CLI needs is one plain HTTP call, logs come as server-sent events that
resume with ``Last-Event-ID`` after a dropped connection, and no GraphQL client library or query
documents have to be shipped. Both APIs call the same service functions, so nothing is lost.

Libraries: click (commands, options, exit codes), rich (tables, the spinner in a terminal),
httpx (HTTP) and httpx-sse (the server-sent event parser), all well kept and already in use
around the project (strawberry's own CLI is built on click and rich).
"""
