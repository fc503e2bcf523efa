"""Every manifest under k8s/ is valid for Kubernetes 1.30 (strict schema)."""

from __future__ import annotations

import pathlib

import kubernetes_validate
import pytest
import yaml

K8S = pathlib.Path(__file__).parent.parent / "k8s"
DOCUMENTS = [
    pytest.param(document, id=f"{path.name}:{document['kind']}/{document['metadata']['name']}")
    for path in sorted([*K8S.glob("*.yaml"), *K8S.glob("knative/*.yaml")])
    if path.name != "kustomization.yaml"
    for document in yaml.safe_load_all(path.read_text())
    if document
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_manifest_is_valid(document: dict[str, object]) -> None:
    kubernetes_validate.validate(document, "1.30", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_no_secret_committed() -> None:
    kinds = {document.values[0]["kind"] for document in DOCUMENTS}
    assert "Secret" not in kinds


def test_rbac_is_least_privilege() -> None:
    documents = [d.values[0] for d in DOCUMENTS]
    rules = [rule for d in documents if d["kind"] in ("ClusterRole", "Role") for rule in d["rules"]]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    verbs = {
        (resource, verb)
        for rule in rules
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert ("secrets", "get") not in verbs
    assert ("replicasets", "list") in verbs
    assert ("leases", "update") in verbs


def test_knative_kustomization_lists_its_rbac_but_not_the_cluster_patch() -> None:
    kustomization = yaml.safe_load((K8S / "knative" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["rbac.yaml"]
    patch = yaml.safe_load((K8S / "knative" / "config-features-patch.yaml").read_text())
    assert (patch["metadata"]["namespace"], patch["metadata"]["name"]) == (
        "knative-serving",
        "config-features",
    )
    assert patch["data"] == {
        "kubernetes.podspec-affinity": "enabled",
        "kubernetes.podspec-tolerations": "enabled",
    }


def test_knative_rbac_adds_only_what_the_knative_runtime_uses() -> None:
    documents = list(yaml.safe_load_all((K8S / "knative" / "rbac.yaml").read_text()))
    rules = {
        (group, resource): set(rule["verbs"])
        for document in documents
        if document["kind"] in ("ClusterRole", "Role")
        for rule in document["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("serving.knative.dev", "services"): {"get", "list", "watch", "create", "patch", "delete"},
        ("serving.knative.dev", "revisions"): {"get", "list", "watch", "delete"},
        ("", "configmaps"): {"get"},
    }
    [role] = [d for d in documents if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "knative-serving"
    assert role["rules"][0]["resourceNames"] == ["config-features"]
