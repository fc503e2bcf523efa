"""The suite's own clean-up touches only what this run created: a developer's real Dockyard on
the same engine keeps its containers (it used to lose every ``managed-by=dockyard`` one)."""

from __future__ import annotations

import uuid

import docker
import pytest

from app.runtime.base import WorkloadSpec
from app.runtime.docker import container_create_kwargs
from tests.support.podman import (
    HTTPD_V1,
    RUN_LABEL,
    RUN_LABELS,
    PodmanService,
    remove_run_containers,
)


def test_extra_labels_cannot_override_dockyards_own() -> None:
    spec = WorkloadSpec(
        container_id="c1",
        revision=2,
        name="n",
        owner="o",
        slug="s",
        image=HTTPD_V1,
        cpu=1,
        ram="64Mi",
        ram_bytes=64 << 20,
        gpu=0,
        ephemeral_storage="1Gi",
        ephemeral_storage_bytes=0,
        port=8080,
    )
    labels = container_create_kwargs(
        spec,
        instance="inst",
        extra_labels={"team": "ml", "dockyard.dev/container-id": "forged", **RUN_LABELS},
    )["labels"]
    assert labels["team"] == "ml"
    assert labels[RUN_LABEL] == RUN_LABELS[RUN_LABEL]
    assert labels["dockyard.dev/container-id"] == "c1"
    assert labels["dockyard.dev/instance"] == "inst"


@pytest.mark.podman
def test_run_cleanup_leaves_other_dockyards_containers(podman_service: PodmanService) -> None:
    client = docker.DockerClient(base_url=podman_service.base_url, version="1.41")
    managed = {"dockyard.dev/managed-by": "dockyard", "dockyard.dev/revision": "1"}
    suffix = uuid.uuid4().hex[:8]
    users = client.containers.create(
        HTTPD_V1,
        name=f"dockyard-user-{suffix}",
        labels={**managed, "dockyard.dev/container-id": f"user-{suffix}"},
    )
    ours = client.containers.create(
        HTTPD_V1,
        name=f"dockyard-ours-{suffix}",
        labels={**managed, "dockyard.dev/container-id": f"ours-{suffix}", **RUN_LABELS},
    )
    try:
        remove_run_containers()
        names = {c.name for c in client.containers.list(all=True, ignore_removed=True)}
        assert users.name in names, "the clean-up removed a container this run did not create"
        assert ours.name not in names
    finally:
        users.remove(force=True)
        client.close()
