"""Knative Serving's controller, played over the Kubernetes emulator's real HTTP API.

The emulator stores ``serving.knative.dev/v1`` Services, Configurations, Revisions and Routes like
any CRD; nothing reconciles them. ``KnativeController`` does what Knative's controller does to
them, through the official client as a controller would: from a Service it makes the
Configuration, the Revision named by the template (with the template's labels and annotations,
owned by the Configuration so deletion cascades) and the Route, and it writes the statuses tests
ask for: a revision's ``Ready`` condition and replica counts, the Service's ``url``,
``traffic`` (``latestRevision`` resolved to the newest ready revision, a URL per tag) and
conditions.
"""

from __future__ import annotations

from typing import Any

import kubernetes.client

from tests.support.kmock_k8s import EmulatorThread

GROUP, VERSION = "serving.knative.dev", "v1"
API_VERSION = f"{GROUP}/{VERSION}"


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    condition = {"type": kind, "status": status}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


class KnativeController:
    def __init__(
        self, k8s: EmulatorThread, namespace: str = "dockyard-workloads", domain: str = "kn.test"
    ) -> None:
        self.k8s = k8s
        self.namespace = namespace
        self.domain = domain
        self.custom: Any = kubernetes.client.CustomObjectsApi(k8s.api_client())

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        return self.k8s.get(plural, self.namespace, name, group=GROUP)

    def _create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        existing = self._get(plural, body["metadata"]["name"])
        if existing is not None:
            return existing
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)
        created = self._get(plural, body["metadata"]["name"])
        assert created is not None
        return created

    def _owner(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        meta = obj["metadata"]
        return [
            {
                "apiVersion": API_VERSION,
                "kind": obj["kind"],
                "name": meta["name"],
                "uid": meta["uid"],
            }
        ]

    def sync(self, service: str) -> str:
        """Create the Configuration, Route and the template's Revision; the revision's name."""
        svc = self._get("services", service)
        assert svc is not None, f"no Knative Service {service}"
        labels = svc["metadata"].get("labels") or {}
        configuration = self._create(
            "configurations",
            {
                "apiVersion": API_VERSION,
                "kind": "Configuration",
                "metadata": {
                    "name": service,
                    "labels": {**labels, "serving.knative.dev/service": service},
                    "ownerReferences": self._owner(svc),
                },
                "spec": {"template": svc["spec"]["template"]},
            },
        )
        self._create(
            "routes",
            {
                "apiVersion": API_VERSION,
                "kind": "Route",
                "metadata": {
                    "name": service,
                    "labels": {**labels, "serving.knative.dev/service": service},
                    "ownerReferences": self._owner(svc),
                },
                "spec": {"traffic": svc["spec"].get("traffic") or []},
            },
        )
        template = svc["spec"]["template"]
        name: str = template["metadata"]["name"]
        self._create(
            "revisions",
            {
                "apiVersion": API_VERSION,
                "kind": "Revision",
                "metadata": {
                    "name": name,
                    "labels": {
                        **(template["metadata"].get("labels") or {}),
                        "serving.knative.dev/service": service,
                        "serving.knative.dev/configuration": service,
                    },
                    "annotations": template["metadata"].get("annotations") or {},
                    "ownerReferences": self._owner(configuration),
                },
                "spec": template["spec"],
            },
        )
        return name

    def revision_status(
        self,
        name: str,
        ready: str,
        *,
        reason: str = "",
        message: str = "",
        actual: int = 0,
        desired: int = 0,
    ) -> None:
        active = (
            _condition("Active", "True")
            if actual
            else _condition("Active", "False", "NoTraffic", "The target is not receiving traffic.")
        )
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            "revisions",
            name,
            {
                "status": {
                    "conditions": [_condition("Ready", ready, reason, message), active],
                    "actualReplicas": actual,
                    "desiredReplicas": desired,
                }
            },
        )

    def publish(
        self,
        service: str,
        *,
        configurations: tuple[str, str, str] = ("True", "", ""),
        routes: tuple[str, str, str] | None = None,
    ) -> dict[str, Any]:
        """Write the Service's status from its spec and its revisions' readiness."""
        svc = self._get("services", service)
        assert svc is not None
        revisions = self.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            "revisions",
            label_selector=f"serving.knative.dev/service={service}",
        )["items"]
        ready = sorted(
            (
                r["metadata"]["name"]
                for r in revisions
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (r.get("status") or {}).get("conditions") or []
                )
            ),
            key=lambda name: int(name.rsplit("-r", 1)[1]),
        )
        traffic = []
        for target in svc["spec"].get("traffic") or []:
            entry = dict(target)
            if target.get("latestRevision"):
                if not ready:
                    continue
                entry["revisionName"] = ready[-1]
            if target.get("tag"):
                entry["url"] = f"http://{target['tag']}-{service}.{self.namespace}.{self.domain}"
            traffic.append(entry)
        status, reason, message = configurations
        routes_ready, route_reason, route_message = routes or (
            "True" if traffic else "Unknown",
            "",
            "",
        )
        overall = "False" if "False" in (status, routes_ready) else routes_ready
        body = {
            "status": {
                "observedGeneration": svc["metadata"]["generation"],
                "url": f"http://{service}.{self.namespace}.{self.domain}",
                "traffic": traffic,
                "latestCreatedRevisionName": svc["spec"]["template"]["metadata"]["name"],
                "latestReadyRevisionName": ready[-1] if ready else None,
                "conditions": [
                    _condition("ConfigurationsReady", status, reason, message),
                    _condition("RoutesReady", routes_ready, route_reason, route_message),
                    _condition("Ready", overall, reason, message),
                ],
            }
        }
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, "services", service, body
        )
        return result
