"""Request bodies shared by the API tests."""

from __future__ import annotations

from typing import Any

HELLO: dict[str, Any] = {
    "name": "hello-world",
    "image": "nginxdemos/hello:latest",
    "cpu": 1,
    "ram": "512Mi",
    "gpu": 0,
    "ephemeralStorage": "10Gi",
    "port": "80",
    "env": {"FOO": "bar"},
}
"""The create body of the REST spec's example (with the spec's own quoted port)."""
