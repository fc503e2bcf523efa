"""The emulator closes kmock's gaps: checked through the official client over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import kubernetes.client
import pytest
import urllib3
from kubernetes.client import ApiException

from tests.support.kmock_k8s import EmulatorThread, label_selector_matches, strategic_merge

NS = "dockyard-workloads"


def deployment(
    name: str,
    image: str = "nginx:1.27",
    labels: dict[str, str] | None = None,
    env: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "env": env or []}]},
            },
        },
    }


def apply(
    apps: kubernetes.client.AppsV1Api,
    body: dict[str, Any],
    manager: str = "test",
    force: bool = True,
) -> Any:
    return apps.patch_namespaced_deployment(
        body["metadata"]["name"],
        NS,
        body,
        field_manager=manager,
        force=force,
        _content_type="application/apply-patch+yaml",
    )


def test_create_stamps_metadata_and_namespace(api_client: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    created = apps.create_namespaced_deployment(NS, deployment("a"))
    assert created.metadata.namespace == NS
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.generation == 1
    with pytest.raises(ApiException) as conflict:
        apps.create_namespaced_deployment(NS, deployment("a"))
    assert conflict.value.status == 409
    with pytest.raises(ApiException) as missing_ns:
        apps.create_namespaced_deployment("nope", deployment("a"))
    assert missing_ns.value.status == 404


def test_server_side_apply_creates_merges_and_bumps_generation(
    api_client: kubernetes.client.ApiClient, k8s: EmulatorThread
) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    first = apply(
        apps, deployment("b", env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    )
    assert first.metadata.generation == 1
    same = apply(
        apps, deployment("b", env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    )
    assert same.metadata.generation == 1
    changed = apply(apps, deployment("b", image="nginx:1.28", env=[{"name": "A", "value": "9"}]))
    assert changed.metadata.generation == 2
    container = changed.spec.template.spec.containers[0]
    assert container.image == "nginx:1.28"
    assert [(e.name, e.value) for e in container.env] == [("A", "9")]  # B pruned: we dropped it
    assert int(changed.metadata.resource_version) > int(first.metadata.resource_version)


def test_apply_conflicts_between_managers_unless_forced(
    api_client: kubernetes.client.ApiClient,
) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    apply(apps, deployment("c"), manager="one")
    with pytest.raises(ApiException) as conflict:
        apply(apps, deployment("c", image="busybox:1"), manager="two", force=False)
    assert conflict.value.status == 409
    assert (
        apply(apps, deployment("c", image="busybox:1"), manager="two")
        .spec.template.spec.containers[0]
        .image
        == "busybox:1"
    )


def test_put_replace_checks_resource_version(api_client: kubernetes.client.ApiClient) -> None:
    coordination = kubernetes.client.CoordinationV1Api(api_client)
    lease = coordination.create_namespaced_lease(
        NS, {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}
    )
    lease.spec.holder_identity = "b"
    replaced = coordination.replace_namespaced_lease("l", NS, lease)
    assert replaced.spec.holder_identity == "b"
    lease.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as conflict:
        coordination.replace_namespaced_lease("l", NS, lease)
    assert conflict.value.status == 409


def test_strategic_merge_lists_by_name_and_status_subresource(
    api_client: kubernetes.client.ApiClient,
) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(NS, deployment("d", env=[{"name": "A", "value": "1"}]))
    patched = apps.patch_namespaced_deployment(
        "d",
        NS,
        {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "2"}]}]}
                }
            }
        },
    )
    container = patched.spec.template.spec.containers[0]
    assert container.image == "nginx:1.27"
    assert [(e.name, e.value) for e in container.env] == [("A", "1"), ("B", "2")]
    ignored = apps.patch_namespaced_deployment("d", NS, {"status": {"replicas": 5}})
    assert ignored.status is None
    status = apps.patch_namespaced_deployment_status("d", NS, {"status": {"replicas": 1}})
    assert status.status.replicas == 1
    assert status.metadata.generation == patched.metadata.generation


def test_list_label_selector_kind_and_namespaces(api_client: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": "other"}})
    apps.create_namespaced_deployment(NS, deployment("e", labels={"tier": "web"}))
    apps.create_namespaced_deployment("other", deployment("f", labels={"tier": "db"}))
    everywhere = apps.list_deployment_for_all_namespaces(label_selector="tier")
    assert sorted(d.metadata.name for d in everywhere.items) == ["e", "f"]
    assert everywhere.kind == "DeploymentList"
    assert everywhere.api_version == "apps/v1"
    assert int(everywhere.metadata.resource_version) > 0
    web = apps.list_deployment_for_all_namespaces(label_selector="tier=web")
    assert [d.metadata.name for d in web.items] == ["e"]
    assert [d.metadata.name for d in apps.list_namespaced_deployment("other").items] == ["f"]
    assert apps.list_deployment_for_all_namespaces(label_selector="tier notin (web,db)").items == []


def test_label_selector_syntax() -> None:
    labels = {"a": "1", "b": "2"}
    assert label_selector_matches("a=1,b in (2, 3),!c", labels)
    assert not label_selector_matches("a!=1", labels)
    assert not label_selector_matches("c", labels)
    assert label_selector_matches("", labels)


def test_strategic_merge_delete_directive() -> None:
    base = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    assert strategic_merge(base, {"env": [{"name": "A", "$patch": "delete"}]}) == {
        "env": [{"name": "B", "value": "2"}]
    }


def test_delete_collects_dependents(api_client: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    owner = apps.create_namespaced_deployment(NS, deployment("g"))
    core.create_namespaced_pod(
        NS,
        {
            "metadata": {
                "name": "g-1",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "g",
                        "uid": owner.metadata.uid,
                    }
                ],
            },
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
        },
    )
    apps.delete_namespaced_deployment("g", NS, propagation_policy="Foreground")
    assert core.list_namespaced_pod(NS).items == []
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_deployment("g", NS)
    assert gone.value.status == 404


def test_watch_resume_timeout_and_gone(
    api_client: kubernetes.client.ApiClient, k8s: EmulatorThread
) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(NS, deployment("h", labels={"w": "1"}))
    version = apps.list_namespaced_deployment(NS).metadata.resource_version
    apps.create_namespaced_deployment(NS, deployment("i", labels={"w": "1"}))
    apps.create_namespaced_deployment(NS, deployment("j", labels={"w": "2"}))
    started = time.monotonic()
    response = apps.list_namespaced_deployment(
        NS,
        watch=True,
        resource_version=version,
        label_selector="w=1",
        timeout_seconds=1,
        _preload_content=False,
    )
    events = [json.loads(line) for line in response.read().splitlines() if line]
    response.release_conn()
    assert time.monotonic() - started < 5  # the server honoured timeoutSeconds
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "i")]
    k8s.compact()
    response = apps.list_namespaced_deployment(
        NS,
        watch=True,
        resource_version=version,
        timeout_seconds=1,
        _preload_content=False,
    )
    events = [json.loads(line) for line in response.read().splitlines() if line]
    response.release_conn()
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410


def test_watch_streams_live_changes(api_client: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    version = apps.list_namespaced_deployment(NS).metadata.resource_version
    response = apps.list_namespaced_deployment(
        NS,
        watch=True,
        resource_version=version,
        timeout_seconds=2,
        _preload_content=False,
    )
    threading.Timer(0.2, lambda: apps.create_namespaced_deployment(NS, deployment("k"))).start()
    line = response.readline()
    response.close()
    assert json.loads(line)["object"]["metadata"]["name"] == "k"


def test_pod_log_plain_text_tail_and_follow(
    api_client: kubernetes.client.ApiClient, k8s: EmulatorThread
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_pod(
        NS,
        {
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
        },
    )
    for index in range(3):
        k8s.append_log(NS, "p", f"line {index}")
    text = core.read_namespaced_pod_log("p", NS, tail_lines=2)
    assert text == "line 1\nline 2\n"
    response = core.read_namespaced_pod_log(
        "p", NS, follow=True, timestamps=True, tail_lines=1, _preload_content=False
    )
    assert response.headers["Content-Type"].startswith("text/plain")
    first = response.readline().decode()
    assert first.endswith("Z line 2\n")
    threading.Timer(0.2, lambda: k8s.append_log(NS, "p", "line 3")).start()
    assert response.readline().decode().endswith(" line 3\n")
    response.close()
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod_log("nope", NS)
    assert missing.value.status == 404


def test_trailing_slash_discovery(k8s: EmulatorThread) -> None:
    with urllib3.PoolManager() as http:
        for path in ("/apis/apps/v1/", "/apis/apps/v1"):
            body = http.request("GET", k8s.url + path).json()
            assert "deployments" in {r["name"] for r in body["resources"]}
        namespaces = http.request("GET", k8s.url + "/api/v1/namespaces/").json()
        assert {"default", NS} <= {n["metadata"]["name"] for n in namespaces["items"]}
