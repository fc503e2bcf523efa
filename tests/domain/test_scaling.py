"""Scaling in the revision spec: defaults, bounds naming ``scaling.<field>``, merging on update,
and runtimes without scale to zero."""

from __future__ import annotations

from typing import Any

import pytest

from app.domain.errors import ValidationFailed
from app.domain.gpus import load_catalog
from app.domain.spec import (
    ContainerSpec,
    Limits,
    ScalingSpec,
    fit_to_runtime,
    spec_for_create,
    spec_for_update,
)
from app.runtime.base import Scaling
from tests.support.validation import field_errors

CATALOG = load_catalog()
LIMITS = Limits(max_instances=50)
BASE = {"name": "web", "image": "nginx:1.27"}
KNATIVE = "Knative Serving is required (this cluster runs plain Deployments)"


def create(data: Any, *, scale_to_zero: bool = True, limits: Limits = LIMITS) -> ContainerSpec:
    return spec_for_create(data, limits=limits, catalog=CATALOG, scale_to_zero=scale_to_zero)


def errors_of(scaling: Any, *, scale_to_zero: bool = True) -> dict[str, str]:
    return field_errors(lambda: create({**BASE, "scaling": scaling}, scale_to_zero=scale_to_zero))


def test_defaults_are_cloud_runs_and_match_the_runtime_contract() -> None:
    spec = create(BASE, limits=Limits())
    default = Scaling()
    assert spec.scaling == ScalingSpec(
        min_instances=default.min_instances,
        max_instances=default.max_instances,
        concurrency=default.concurrency,
        scale_to_zero_after_seconds=default.scale_to_zero_after_seconds,
    )
    assert spec.to_json()["scaling"] == {
        "minInstances": 0,
        "maxInstances": 100,
        "concurrency": 80,
        "scaleToZeroAfterSeconds": 900,
    }


def test_default_maximum_follows_the_operator_limit_and_an_explicit_minimum() -> None:
    assert create(BASE).scaling.max_instances == 50
    assert (
        create({**BASE, "scaling": {"minInstances": 7}}, limits=Limits()).scaling.max_instances
        == 100
    )
    assert (
        create(
            {**BASE, "scaling": {"minInstances": 120}}, limits=Limits(max_instances=200)
        ).scaling.max_instances
        == 120
    )


def test_stored_specs_without_scaling_read_as_defaults() -> None:
    stored = create(BASE).to_json()
    del stored["scaling"]
    assert ContainerSpec.model_validate(stored).scaling == ScalingSpec()


@pytest.mark.parametrize(
    "scaling,field,fragment",
    [
        ([1], "scaling", "must be an object"),
        ({"minInstances": -1}, "scaling.minInstances", "0 or more"),
        ({"minInstances": "1"}, "scaling.minInstances", "whole number of instances"),
        ({"minInstances": 1.5}, "scaling.minInstances", "whole number of instances"),
        ({"maxInstances": 0}, "scaling.maxInstances", "at least 1"),
        (
            {"minInstances": 5, "maxInstances": 3},
            "scaling.maxInstances",
            "at least minInstances (5)",
        ),
        ({"maxInstances": 51}, "scaling.maxInstances", "at most 50"),
        ({"minInstances": 60}, "scaling.maxInstances", "at most 50"),
        ({"concurrency": 0}, "scaling.concurrency", "from 1 to 1000"),
        ({"concurrency": 1001}, "scaling.concurrency", "from 1 to 1000"),
        ({"concurrency": True}, "scaling.concurrency", "in-flight requests per instance"),
        ({"scaleToZeroAfterSeconds": -1}, "scaling.scaleToZeroAfterSeconds", "0 to 86400"),
        ({"scaleToZeroAfterSeconds": 86401}, "scaling.scaleToZeroAfterSeconds", "0 to 86400"),
        (
            {"minInstance": 1},
            "scaling.minInstance",
            "allowed fields: minInstances, maxInstances, concurrency, scaleToZeroAfterSeconds",
        ),
    ],
)
def test_each_scaling_rule_names_the_field(scaling: Any, field: str, fragment: str) -> None:
    errors = errors_of(scaling)
    assert field in errors, errors
    assert fragment in errors[field]


def test_null_sub_fields_take_the_defaults() -> None:
    spec = create({**BASE, "scaling": {"concurrency": None, "minInstances": 2}})
    assert spec.scaling.concurrency == 80 and spec.scaling.min_instances == 2
    assert create({**BASE, "scaling": None}).scaling == create(BASE).scaling


def test_update_merges_given_sub_fields_into_the_current_scaling() -> None:
    current = create({**BASE, "scaling": {"minInstances": 1, "concurrency": 10}})
    updated = spec_for_update(
        current, {"scaling": {"maxInstances": 5}}, limits=LIMITS, catalog=CATALOG
    )
    assert updated.scaling == ScalingSpec(
        min_instances=1, max_instances=5, concurrency=10, scale_to_zero_after_seconds=900
    )
    unchanged = spec_for_update(current, {"image": "nginx:1.28"}, limits=LIMITS, catalog=CATALOG)
    assert unchanged.scaling == current.scaling
    reset = spec_for_update(current, {"scaling": None}, limits=LIMITS, catalog=CATALOG)
    assert reset.scaling == create(BASE).scaling
    with pytest.raises(ValidationFailed) as caught:
        spec_for_update(current, {"scaling": {"maxInstances": 0}}, limits=LIMITS, catalog=CATALOG)
    assert caught.value.errors[0].field == "scaling.maxInstances"


def test_without_scale_to_zero_an_unset_minimum_is_one_and_zero_is_refused() -> None:
    assert create(BASE, scale_to_zero=False).scaling.min_instances == 1
    assert (
        create({**BASE, "scaling": {"concurrency": 5}}, scale_to_zero=False).scaling.min_instances
        == 1
    )
    errors = errors_of({"minInstances": 0}, scale_to_zero=False)
    assert KNATIVE in errors["scaling.minInstances"]
    # a spec stored with min 0 (e.g. made before) becomes min 1 on update and on rollback
    stored = create(BASE)
    assert stored.scaling.min_instances == 0
    updated = spec_for_update(
        stored, {"image": "nginx:1.28"}, limits=LIMITS, catalog=CATALOG, scale_to_zero=False
    )
    assert updated.scaling.min_instances == 1
    assert fit_to_runtime(stored, scale_to_zero=False).scaling.min_instances == 1
    assert fit_to_runtime(stored, scale_to_zero=True) is stored


def test_a_spec_stored_before_scaling_existed_updates_under_a_lower_limit() -> None:
    stored = create(BASE, limits=Limits()).to_json()
    del stored["scaling"]
    old = ContainerSpec.model_validate(stored)
    updated = spec_for_update(old, {"image": "nginx:1.28"}, limits=LIMITS, catalog=CATALOG)
    assert updated.scaling.max_instances == 50
    assert "scaling" in updated.model_fields_set
