"""Status derivation (latest created vs latest ready) and the GPU catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.domain.gpus import load_catalog
from app.domain.status import FAILED, PENDING, READY, RevisionObservation, derive_status


def test_latest_ready_is_deployed() -> None:
    status = derive_status(generation=2, observations=[RevisionObservation(2, READY)])
    assert (status.status, status.ready_revision, status.reason) == ("deployed", 2, "")


def test_failed_new_revision_keeps_old_one_serving() -> None:
    status = derive_status(
        generation=3,
        observations=[
            RevisionObservation(2, READY),
            RevisionObservation(3, FAILED, "ImageNotFound", "image x:1 not found"),
        ],
    )
    assert status.status == "failed" and status.reason == "ImageNotFound"
    assert status.ready_revision == 2
    assert status.message == "revision 3: image x:1 not found; revision 2 keeps serving"


def test_pending_and_absent() -> None:
    pending = derive_status(
        generation=1,
        observations=[RevisionObservation(1, PENDING, "Starting", "port 80 not open yet")],
    )
    assert pending.status == "deploying" and "port 80" in pending.message
    absent = derive_status(generation=1, observations=[], runtime_reason="engine down")
    assert absent.status == "deploying" and absent.reason == "RuntimeUnavailable"
    assert "engine down" in absent.message


def test_catalog_has_the_25_documented_models() -> None:
    catalog = load_catalog()
    assert len(catalog.models) == 25
    assert catalog.resolve("A100") == catalog.resolve("nvidia A100")
    assert catalog.resolve("3060ti") is not None and catalog.resolve("nope") is None
    assert all(model.label_values for model in catalog.models)


def test_catalog_file_override(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(
        '{"label": "gpu.example/model", "models": [{"code": "l4", "name": "Nvidia l4",'
        ' "labels": ["NVIDIA-L4"]}]}'
    )
    catalog = load_catalog(path)
    assert catalog.label == "gpu.example/model"
    assert [m.code for m in catalog.models] == ["l4"]
    path.write_text("models: [{code: 1}]")
    with pytest.raises(ValueError, match="GPU catalog"):
        load_catalog(path)
