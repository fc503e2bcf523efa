"""Every validation rule of the container spec, each error naming the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.errors import ValidationFailed
from app.domain.gpus import load_catalog
from app.domain.quantity import parse_quantity
from app.domain.spec import Limits, spec_for_create, spec_for_update
from tests.support.validation import field_errors

CATALOG = load_catalog()
LIMITS = Limits(max_cpu=8, max_gpu=4)
BASE = {"name": "web", "image": "nginx:1.27"}


def errors_of(data: Any) -> dict[str, str]:
    return field_errors(lambda: spec_for_create(data, limits=LIMITS, catalog=CATALOG))


@pytest.mark.parametrize(
    "changes,field,fragment",
    [
        ({"name": None}, "name", "required"),
        ({"name": ""}, "name", "DNS-1123"),
        ({"name": "-web"}, "name", "DNS-1123"),
        ({"name": "web-"}, "name", "DNS-1123"),
        ({"name": "Web"}, "name", "DNS-1123"),
        ({"name": "a" * 64}, "name", "at most 63"),
        ({"name": "we_b"}, "name", "DNS-1123"),
        ({"name": 5}, "name", "must be a string"),
        ({"image": None}, "image", "required"),
        ({"image": "nginx"}, "image", "must include a tag, e.g. nginx:1.27"),
        ({"image": "localhost:5000/nginx"}, "image", "must include a tag, e.g. nginx:1.27"),
        ({"image": "nginx:"}, "image", "tag must be"),
        ({"image": "nginx@sha256:xyz"}, "image", "digest"),
        ({"image": "ng inx:1"}, "image", "without spaces"),
        ({"image": "x:" + "1" * 600}, "image", "at most 512"),
        ({"cpu": 0}, "cpu", "greater than 0"),
        ({"cpu": -1}, "cpu", "greater than 0"),
        ({"cpu": "1"}, "cpu", "must be a number"),
        ({"cpu": True}, "cpu", "must be a number"),
        ({"cpu": 9}, "cpu", "at most 8"),
        ({"ram": "lots"}, "ram", "not a Kubernetes quantity"),
        ({"ram": "0Mi"}, "ram", "greater than 0"),
        ({"ram": 512}, "ram", "must be a string"),
        ({"ephemeralStorage": "10Xi"}, "ephemeralStorage", "not a Kubernetes quantity"),
        ({"gpu": -1}, "gpu", "0 or more"),
        ({"gpu": 1.5}, "gpu", "whole number"),
        ({"gpu": "1"}, "gpu", "whole number"),
        ({"gpu": 5}, "gpu", "at most 4"),
        ({"port": 0}, "port", "1 to 65535"),
        ({"port": "70000"}, "port", "1 to 65535"),
        ({"port": "http"}, "port", "port number"),
        ({"port": 80.5}, "port", "port number"),
        ({"env": {"1BAD": "x"}}, "env.1BAD", "variable names"),
        ({"env": {"A-B": "x"}}, "env.A-B", "variable names"),
        ({"env": {"A": 1}}, "env.A", "strings"),
        ({"env": ["A=1"]}, "env", "object"),
        ({"env": {f"K{n}": "v" for n in range(300)}}, "env", "at most 256"),
        ({"command": "run"}, "command", "list of strings"),
        ({"command": [1]}, "command[0]", "string"),
        ({"arguments": ["x"] * 300}, "arguments", "at most 256"),
        ({"desiredGPUs": ["zz"], "gpu": 1}, "desiredGPUs[0]", "valid codes: h100, a100"),
        ({"desiredGPUs": ["a100"]}, "desiredGPUs", "needs gpu of 1 or more"),
        ({"desiredGPUs": "a100", "gpu": 1}, "desiredGPUs", "list of GPU model"),
        ({"surprise": 1}, "surprise", "unknown field; allowed fields: name, image"),
    ],
)
def test_each_rule_names_the_field(changes: dict[str, Any], field: str, fragment: str) -> None:
    errors = errors_of({**BASE, **changes})
    assert field in errors, errors
    assert fragment in errors[field]


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of({"name": "-", "image": "nginx", "cpu": 0, "port": 0})
    assert set(errors) == {"name", "image", "cpu", "port"}


def test_body_must_be_an_object() -> None:
    assert errors_of([1, 2]) == {"body": "the request body must be a JSON object"}
    assert errors_of(None) == {"body": "the request body must be a JSON object"}


def test_valid_spec_is_normalised() -> None:
    spec = spec_for_create(
        {
            **BASE,
            "port": "8080",
            "cpu": 2,
            "gpu": 2,
            "desiredGPUs": ["A100", "Nvidia tesla-p4", "a100"],
            "image": "nginx@sha256:" + "a" * 64,
        },
        limits=LIMITS,
        catalog=CATALOG,
    )
    assert spec.port == 8080 and spec.cpu == 2.0
    assert spec.desired_gpus == ["Nvidia a100", "Nvidia tesla-p4"]
    assert spec.to_json()["desiredGPUs"] == ["Nvidia a100", "Nvidia tesla-p4"]
    assert spec.to_json()["ephemeralStorage"] == "1Gi"


def test_update_keeps_absent_fields_and_revalidates() -> None:
    current = spec_for_create(
        {**BASE, "gpu": 1, "desiredGPUs": ["t4"]}, limits=LIMITS, catalog=CATALOG
    )
    updated = spec_for_update(current, {"image": "nginx:1.28"}, limits=LIMITS, catalog=CATALOG)
    assert updated.image == "nginx:1.28" and updated.desired_gpus == ["Nvidia t4"]
    with pytest.raises(ValidationFailed) as caught:
        spec_for_update(current, {"gpu": 0}, limits=LIMITS, catalog=CATALOG)
    assert caught.value.errors[0].field == "desiredGPUs"


@pytest.mark.parametrize(
    "text,size",
    [
        ("512Mi", 512 * 2**20),
        ("2Gi", 2 * 2**30),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("100", 100),
        ("1k", 1000),
        ("1Ki", 1024),
        ("0.5", 1),
    ],
)
def test_quantities(text: str, size: int) -> None:
    assert parse_quantity(text) == size


@pytest.mark.parametrize("text", ["", "1ki", "Mi", "1.", "-1Gi", "1e3", "1 Gi", "1GB"])
def test_not_quantities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_an_env_that_could_never_be_execed_is_refused_with_the_limit() -> None:
    huge = {f"V{n}": "x" * 32 * 1024 for n in range(256)}  # 8 MiB: the example
    message = errors_of({**BASE, "env": huge})["env"]
    assert "1024 KiB limit" in message and "ARG_MAX" in message
    # the arguments count too
    half = {f"V{n}": "x" * 32 * 1024 for n in range(20)}
    words = ["y" * 4000] * 100
    assert "env" in errors_of({**BASE, "env": half, "arguments": words})
    # large but possible
    spec = spec_for_create({**BASE, "env": half}, limits=LIMITS, catalog=CATALOG)
    assert len(spec.env) == 20
    # updates are checked too
    with pytest.raises(ValidationFailed):
        spec_for_update(spec, {"env": huge}, limits=LIMITS, catalog=CATALOG)
