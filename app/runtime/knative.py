"""The Knative Serving runtime: one Knative ``Service`` per container.

Knative does what Dockyard's own data plane does on one machine: request-driven autoscaling with
scale to zero, traffic split by percent and a URL per tag. Dockyard writes the Service (built by
``knative_manifests``) with server-side apply as field manager ``dockyard`` through the official
client's ``CustomObjectsApi`` and reads back the Service, its Revisions and their pods. It reuses
the Deployment runtime's plumbing (threads for the synchronous client, error translation, watches,
pod-log following, pod failure reasons), which is why it subclasses ``KubernetesRuntime``.

Status, per revision (``observe``):

- a pod of the revision says why it cannot run, early and specifically, as on the Deployment
  runtime: ``ImagePullBackOff`` naming the image, ``CrashLoopBackOff`` with the exit code,
  ``Unschedulable`` naming the wanted GPU models;
- else the Revision's ``Ready`` condition: ``False`` is failed with Knative's reason
  (``ProgressDeadlineExceeded``, ``ExitCode1``…), ``True`` is ready, with
  ``status.actualReplicas``/``desiredReplicas`` as instances: ready with 0 instances is *scaled
  to zero*, healthy;
- Knative forgets why a revision failed once it has scaled it to zero (knative/serving#14157,
  #11717): the runtime remembers the reason and keeps reporting it until the revision has
  ready instances again; the reconciler persists the status it derives from it;
- a GPU revision on a cluster whose ``config-features`` disable ``kubernetes.podspec-affinity``
  or ``kubernetes.podspec-tolerations`` is not applied (Knative's webhook would refuse it) and
  fails with reason ``KnativeFeaturesDisabled`` naming the flags.

URLs: ``serving(container_id)`` returns ``status.url`` and every traffic target of
``status.traffic`` with its percent and, for tags, its own URL; ``observed_urls`` reduces that to
what the reconciler stores (``containers.observed_urls``) and the API shows as ``urls``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes.client

from app.domain.traffic import ObservedUrls
from app.runtime.base import (
    LABEL_CONTAINER_ID,
    Capabilities,
    Phase,
    RevisionState,
    RuntimeRejected,
    WorkloadSpec,
)
from app.runtime.k8s import _APPLY, FIELD_MANAGER, KubernetesRuntime, _revision_of
from app.runtime.k8s_manifests import (
    ANNOTATION_GPU_MODELS,
    KubernetesConfig,
    make_namespace,
    managed_selector,
    namespace_for,
)
from app.runtime.knative_manifests import (
    GPU_FEATURES,
    GROUP,
    VERSION,
    make_knative_service,
    needs_gpu_features,
    revision_name,
    revision_number,
    service_name,
)

logger = logging.getLogger(__name__)
FEATURES_CONFIGMAP = "config-features"
FEATURES_CACHE_SECONDS = 30.0
REASON_FEATURES_DISABLED = "KnativeFeaturesDisabled"


@dataclass(frozen=True)
class ServedTarget:
    """One entry of a Knative Service's ``status.traffic``: what Knative actually routes."""

    revision: int | None
    percent: int
    latest: bool = False
    tag: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Serving:
    """Where a container is reachable on Knative, and how its traffic is split right now."""

    url: str | None
    traffic: tuple[ServedTarget, ...] = ()

    @property
    def urls(self) -> tuple[str, ...]:
        """The container's URL, then the URL of every tag (in ``status.traffic`` order)."""
        found = [self.url] if self.url else []
        found += [target.url for target in self.traffic if target.url and target.tag]
        return tuple(dict.fromkeys(found))


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        condition.get("type", ""): condition
        for condition in (obj.get("status") or {}).get("conditions") or []
    }


class KnativeRuntime(KubernetesRuntime):
    """Runs revisions of containers as Knative Serving revisions."""

    name = "knative"
    capabilities = Capabilities(autoscales=True, scale_to_zero=True, traffic_split=True)

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        config: KubernetesConfig | None = None,
    ) -> None:
        super().__init__(api_client, config)
        self._custom: Any = kubernetes.client.CustomObjectsApi(api_client)
        self._failures: dict[tuple[str, int], tuple[str, str]] = {}
        """(container, revision) -> the last failure reason seen, kept across scale to zero."""
        self._features: tuple[float, dict[str, str]] | None = None

    # --- plumbing ---

    async def _list_custom(self, plural: str, selector: str) -> list[dict[str, Any]]:
        if self._shared:
            result = await self._call(
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self._config.namespace,
                plural,
                label_selector=selector,
            )
        else:
            result = await self._call(
                self._custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                plural,
                label_selector=selector,
            )
        return list(result.get("items") or [])

    async def _service(self, container_id: str) -> dict[str, Any] | None:
        if self._shared:
            found: dict[str, Any] | None = await self._call_or_none(
                self._custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self._config.namespace,
                "services",
                service_name(container_id),
            )
            return found
        services = await self._list_custom("services", f"{LABEL_CONTAINER_ID}={container_id}")
        return services[0] if services else None

    async def _revisions(self, container_id: str) -> dict[int, dict[str, Any]]:
        revisions: dict[int, dict[str, Any]] = {}
        for item in await self._list_custom("revisions", f"{LABEL_CONTAINER_ID}={container_id}"):
            metadata = item.get("metadata") or {}
            number = _revision_of(metadata.get("labels")) or revision_number(
                metadata.get("name", ""), container_id
            )
            if number is not None:
                revisions[number] = item
        return revisions

    async def feature_flags(self) -> dict[str, str] | None:
        """Knative's ``config-features`` (cached briefly): empty when the ConfigMap is absent
        (every flag at its default), None when Dockyard may not read it (RBAC)."""
        now = time.monotonic()
        if self._features is not None and now - self._features[0] < FEATURES_CACHE_SECONDS:
            return self._features[1]
        try:
            configmap = await self._call_or_none(
                self._core.read_namespaced_config_map,
                FEATURES_CONFIGMAP,
                self._config.knative_namespace,
            )
        except RuntimeRejected as error:  # 403: apply anyway; Knative's webhook has the say
            logger.warning("cannot read Knative's %s: %s", FEATURES_CONFIGMAP, error)
            return None
        flags = dict((configmap.data or {}) if configmap is not None else {})
        self._features = (now, flags)
        return flags

    async def _missing_gpu_features(self) -> list[str]:
        flags = await self.feature_flags()
        if flags is None:
            return []
        return [
            flag
            for flag in GPU_FEATURES
            if flags.get(flag, "disabled").strip().lower() not in ("enabled", "allowed")
        ]

    # --- Runtime protocol ---

    async def apply(self, spec: WorkloadSpec) -> None:
        namespace = namespace_for(spec.owner, self._config)
        body = make_knative_service(spec, self._config)
        if needs_gpu_features(body):
            missing = await self._missing_gpu_features()
            if missing:
                self._failures[(spec.container_id, spec.revision)] = (
                    REASON_FEATURES_DISABLED,
                    f"GPU revisions need Knative's config-features flags {' and '.join(missing)} "
                    f"set to enabled (ConfigMap {FEATURES_CONFIGMAP} in namespace "
                    f"{self._config.knative_namespace}; see k8s/knative/"
                    "config-features-patch.yaml): Knative refuses pod affinity and tolerations "
                    "without them",
                )
                return
        if not self._shared and namespace not in self._namespaces_ready:
            await self._call(
                self._core.patch_namespace,
                namespace,
                make_namespace(namespace),
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
            )
            self._namespaces_ready.add(namespace)
        await self._call(
            self._custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "services",
            service_name(spec.container_id),
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=_APPLY,
        )
        failure = self._failures.get((spec.container_id, spec.revision))
        if failure is not None and failure[0] == REASON_FEATURES_DISABLED:
            del self._failures[(spec.container_id, spec.revision)]

    async def scale(self, spec: WorkloadSpec, instances: int, *, urgent: bool = False) -> None:
        """Knative's autoscaler decides the instance count; this applies the Service (the
        revision template, its scaling annotations and the traffic)."""
        await self.apply(spec)

    async def retire(self, container_id: str, *, keep: set[int]) -> None:
        """Delete the container's Revisions outside ``keep`` that no traffic target names
        (Knative keeps old revisions; a revision still serving a split stays)."""
        service = await self._service(container_id)
        if service is None:
            return
        routed = {
            target.get("revisionName")
            for source in (service.get("spec") or {}, service.get("status") or {})
            for target in source.get("traffic") or []
        }
        template = ((service.get("spec") or {}).get("template") or {}).get("metadata") or {}
        for number, revision in (await self._revisions(container_id)).items():
            name = revision["metadata"]["name"]
            if number in keep or name in routed or name == template.get("name"):
                continue
            await self._call_or_none(
                self._custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                revision["metadata"]["namespace"],
                "revisions",
                name,
            )
            self._failures.pop((container_id, number), None)

    async def remove(self, container_id: str) -> None:
        for service in await self._list_custom("services", f"{LABEL_CONTAINER_ID}={container_id}"):
            await self._call_or_none(
                self._custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                service["metadata"]["namespace"],
                "services",
                service["metadata"]["name"],
                propagation_policy="Foreground",
            )
        for key in [key for key in self._failures if key[0] == container_id]:
            del self._failures[key]

    async def observe(self, container_id: str) -> list[RevisionState]:
        remembered = {
            revision: failure
            for (cid, revision), failure in self._failures.items()
            if cid == container_id and failure[0] == REASON_FEATURES_DISABLED
        }
        service = await self._service(container_id)
        states: dict[int, RevisionState] = {
            revision: RevisionState(container_id, revision, Phase.FAILED, reason, message)
            for revision, (reason, message) in remembered.items()
        }
        if service is None:
            return sorted(states.values(), key=lambda s: -s.revision)
        namespace = service["metadata"]["namespace"]
        revisions = await self._revisions(container_id)
        pods = await self._call(
            self._core.list_namespaced_pod,
            namespace,
            label_selector=f"{LABEL_CONTAINER_ID}={container_id}",
        )
        pods_by_revision: dict[int, list[Any]] = {}
        for pod in pods.items:
            number = _revision_of(pod.metadata.labels)
            if number is not None:
                pods_by_revision.setdefault(number, []).append(pod)
        for number, revision in revisions.items():
            if number in states:
                continue
            pods_of = pods_by_revision.get(number, [])
            states[number] = dataclasses.replace(
                self._knative_revision_state(container_id, number, revision, pods_of),
                moments=self._moments(pods_of),
            )
        template = ((service.get("spec") or {}).get("template") or {}).get("metadata") or {}
        current = _revision_of(template.get("labels"))
        if current is not None and current not in states:
            states[current] = self._unborn_state(container_id, current, service)
        routes = _conditions(service).get("RoutesReady") or {}
        observed = (service.get("status") or {}).get("observedGeneration")
        current_state = states.get(current) if current is not None else None
        if (
            current_state is not None
            and current_state.phase is Phase.READY
            and routes.get("status") == "False"
            and observed == (service.get("metadata") or {}).get("generation")
        ):
            # The revision runs, but Knative cannot route the traffic asked for (a target names
            # a revision that does not exist…): requests fail, so the revision is not deployed.
            states[current_state.revision] = dataclasses.replace(
                current_state,
                phase=Phase.FAILED,
                reason=routes.get("reason") or "RoutesNotReady",
                message=f"traffic: {routes.get('message') or 'Knative cannot route it'}",
            )
        return sorted(states.values(), key=lambda s: -s.revision)

    def _knative_revision_state(
        self, container_id: str, number: int, revision: dict[str, Any], pods: list[Any]
    ) -> RevisionState:
        key = (container_id, number)
        status = revision.get("status") or {}
        ready_instances = int(status.get("actualReplicas") or 0)
        desired = int(status.get("desiredReplicas") or 0)
        gpu_models = ((revision.get("metadata") or {}).get("annotations") or {}).get(
            ANNOTATION_GPU_MODELS
        )
        for pod in sorted(pods, key=lambda pod: pod.metadata.name):
            failure = self._pod_failure(pod, gpu_models)
            if failure is not None:
                self._failures[key] = failure
                return RevisionState(
                    container_id,
                    number,
                    Phase.FAILED,
                    *failure,
                    instances_ready=ready_instances,
                    instances_desired=desired,
                )
        ready = _conditions(revision).get("Ready") or {}
        if ready.get("status") == "False":
            failure = (ready.get("reason") or "RevisionFailed", ready.get("message") or "")
            self._failures[key] = failure
            return RevisionState(
                container_id,
                number,
                Phase.FAILED,
                *failure,
                instances_ready=ready_instances,
                instances_desired=desired,
            )
        remembered = self._failures.get(key)
        if remembered is not None:
            if ready.get("status") == "True" and ready_instances > 0:
                del self._failures[key]  # it runs now: the old reason is history
            else:
                # Knative scaled the failed revision to zero and forgot why: we did not.
                return RevisionState(
                    container_id,
                    number,
                    Phase.FAILED,
                    *remembered,
                    instances_ready=ready_instances,
                    instances_desired=desired,
                )
        if ready.get("status") == "True":
            return RevisionState(
                container_id,
                number,
                Phase.READY,
                instances_ready=ready_instances,
                instances_desired=desired,
            )
        return RevisionState(
            container_id,
            number,
            Phase.PENDING,
            ready.get("reason") or "",
            ready.get("message") or "",
            instances_ready=ready_instances,
            instances_desired=desired,
        )

    @staticmethod
    def _unborn_state(container_id: str, number: int, service: dict[str, Any]) -> RevisionState:
        """The template's revision before Knative made a Revision of it: pending, or failed
        with the Service's reason when its configuration cannot produce one."""
        for kind in ("ConfigurationsReady", "Ready"):
            condition = _conditions(service).get(kind) or {}
            if condition.get("status") == "False":
                return RevisionState(
                    container_id,
                    number,
                    Phase.FAILED,
                    condition.get("reason") or kind,
                    condition.get("message") or "",
                )
        return RevisionState(container_id, number, Phase.PENDING)

    async def serving(self, container_id: str) -> Serving | None:
        """The URLs and the traffic Knative routes now (``status.url``, ``status.traffic``)."""
        service = await self._service(container_id)
        if service is None:
            return None
        status = service.get("status") or {}
        targets = tuple(
            ServedTarget(
                revision=revision_number(target.get("revisionName") or "", container_id),
                percent=int(target.get("percent") or 0),
                latest=bool(target.get("latestRevision")),
                tag=target.get("tag"),
                url=target.get("url"),
            )
            for target in status.get("traffic") or []
        )
        return Serving(url=status.get("url"), traffic=targets)

    async def observed_urls(self, container_id: str) -> ObservedUrls | None:
        """``ReportsUrls``: ``status.url`` and the URL of each tag in ``status.traffic``."""
        serving = await self.serving(container_id)
        if serving is None:
            return None
        return ObservedUrls(
            url=serving.url,
            tags={t.tag: t.url for t in serving.traffic if t.tag and t.url},
        )

    async def list_managed(self) -> dict[str, set[int]]:
        managed: dict[str, set[int]] = {}
        for plural in ("services", "revisions"):
            for item in await self._list_custom(plural, managed_selector()):
                metadata = item.get("metadata") or {}
                labels = metadata.get("labels") or {}
                container_id = labels.get(LABEL_CONTAINER_ID)
                if container_id is None:
                    continue
                revisions = managed.setdefault(container_id, set())
                if plural == "services":
                    template = ((item.get("spec") or {}).get("template") or {}).get("metadata")
                    labels = (template or {}).get("labels") or labels
                number = _revision_of(labels)
                if number is not None:
                    revisions.add(number)
        return managed

    # --- watch and logs ---

    def _watch_sources(self) -> list[tuple[str, Callable[..., Any], tuple[str, ...]]]:
        if self._shared:
            custom: Callable[..., Any] = self._custom.list_namespaced_custom_object
            pods: Callable[..., Any] = self._core.list_namespaced_pod
            namespace: tuple[str, ...] = (self._config.namespace,)
        else:
            custom = self._custom.list_cluster_custom_object
            pods = self._core.list_pod_for_all_namespaces
            namespace = ()
        return [
            (plural, custom, (GROUP, VERSION, *namespace, plural))
            for plural in ("services", "revisions")
        ] + [("pods", pods, namespace)]

    async def _log_target(self, container_id: str, revision: int | None) -> tuple[str, int] | None:
        service = await self._service(container_id)
        if service is None:
            return None
        if revision is None:
            revisions = await self._revisions(container_id)
            ready = [
                number
                for number, item in revisions.items()
                if (_conditions(item).get("Ready") or {}).get("status") == "True"
            ]
            template = ((service.get("spec") or {}).get("template") or {}).get("metadata") or {}
            revision = max(ready) if ready else _revision_of(template.get("labels"))
        if revision is None:
            return None
        return service["metadata"]["namespace"], revision

    async def _log_revision_alive(self, container_id: str, namespace: str, revision: int) -> bool:
        """A Knative revision may start pods again (wake from zero) for as long as it exists."""
        found = await self._call_or_none(
            self._custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            "revisions",
            revision_name(container_id, revision),
        )
        return found is not None


def serves_knative(api_client: kubernetes.client.ApiClient, timeout: float = 10.0) -> bool:
    """Whether the cluster serves ``serving.knative.dev/v1`` (API discovery; blocking)."""
    apis: Any = kubernetes.client.ApisApi(api_client)
    groups = apis.get_api_versions(_request_timeout=timeout)
    return any(
        group.name == GROUP and any(v.version == VERSION for v in group.versions or [])
        for group in groups.groups or []
    )
