"""The Kubernetes runtime: one Deployment, Service and Ingress per container.

The official ``kubernetes`` client is synchronous, so every call, watch and log stream runs in a
worker thread (``asyncio.to_thread``) and never blocks the event loop. Objects are written with
server-side apply (field manager ``dockyard``, forced), so ``apply`` is idempotent and only the
fields Dockyard owns are touched.

A container is one Deployment whose pod template carries the revision: applying a new revision
changes the template and the Deployment controller rolls it out with ``maxUnavailable: 0``. For
that reason ``retire`` is a no-op here: the rolling update already removes the old revision's
pods once the new ones are available, and an old revision never outlives its ReplicaSet.

Each observed revision carries its deploy phases (``RevisionState.moments``) read from its pods'
status by ``k8s_phases.pod_moments`` (scheduled, image ready, started, ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from app.domain.logtime import parse_ns
from app.runtime.base import (
    LABEL_CONTAINER_ID,
    LABEL_REVISION,
    Capabilities,
    LogLine,
    Phase,
    RevisionState,
    RuntimeAdapterError,
    RuntimeConflict,
    RuntimeEvent,
    RuntimeRejected,
    RuntimeUnavailable,
    WorkloadSpec,
)
from app.runtime.k8s_manifests import (
    ANNOTATION_GPU_MODELS,
    CONTAINER_NAME,
    KubernetesConfig,
    make_autoscaler,
    make_deployment,
    make_ingress,
    make_namespace,
    make_service,
    managed_selector,
    namespace_for,
    object_name,
)
from app.runtime.k8s_phases import pod_moments

logger = logging.getLogger(__name__)

T = TypeVar("T")
FIELD_MANAGER = "dockyard"
_APPLY = "application/apply-patch+yaml"
# Waiting reasons that will not fix themselves: report them at once, not after the deadline.
FAILING_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def translate_error(error: Exception) -> RuntimeAdapterError:
    """The project's exception for a client-library error (the caller raises it ``from``)."""
    if isinstance(error, ApiException):
        status = error.status or 0
        detail = f"{status} {error.reason or ''}".strip()
        try:
            message = json.loads(error.body or "{}").get("message", "")
        except (TypeError, ValueError):
            message = ""
        text = f"Kubernetes API: {detail}: {message}" if message else f"Kubernetes API: {detail}"
        if status == 409:
            return RuntimeConflict(text)
        if status in (400, 403, 404, 422):
            return RuntimeRejected(text)
        return RuntimeUnavailable(text)
    return RuntimeUnavailable(f"Kubernetes API unreachable: {error}")


def _is_client_error(error: BaseException) -> bool:
    return isinstance(error, ApiException | urllib3.exceptions.HTTPError | OSError)


def parse_log_line(raw: str) -> tuple[int, str]:
    """Split ``2024-05-01T10:00:00.123456789Z text`` (RFC 3339, nanoseconds) into its time in
    nanoseconds and its text; an unstamped line is stamped now."""
    stamp, _, text = raw.partition(" ")
    ns = parse_ns(stamp)
    if ns is None:
        return time.time_ns(), raw
    return ns, text


def _revision_of(labels: dict[str, str] | None) -> int | None:
    value = (labels or {}).get(LABEL_REVISION)
    return int(value) if value is not None and value.isdigit() else None


class KubernetesRuntime:
    """Runs revisions of containers as Deployments on a Kubernetes cluster."""

    name = "kubernetes"
    capabilities = Capabilities(autoscales=False, scale_to_zero=False, traffic_split=False)
    """Plain Deployments: a fixed replica count, one revision serving at a time."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        config: KubernetesConfig | None = None,
    ) -> None:
        # Typed as Any: the generated client's signatures are looser than its annotations
        # (``_request_timeout=(connect, None)``, untyped helpers) and we only pass plain data.
        self._api_client: Any = api_client
        self._config = config or KubernetesConfig()
        self._apps: Any = kubernetes.client.AppsV1Api(api_client)
        self._core: Any = kubernetes.client.CoreV1Api(api_client)
        self._networking: Any = kubernetes.client.NetworkingV1Api(api_client)
        self._autoscaling: Any = kubernetes.client.AutoscalingV2Api(api_client)
        self._namespaces_ready: set[str] = set()

    @property
    def api_client(self) -> kubernetes.client.ApiClient:
        """The client this runtime talks through (shared with the Lease elector)."""
        client: kubernetes.client.ApiClient = self._api_client
        return client

    @classmethod
    def from_kubeconfig(
        cls,
        config: KubernetesConfig | None = None,
        *,
        path: str | None = None,
        context: str | None = None,
    ) -> KubernetesRuntime:
        """A runtime for the cluster of a kubeconfig file (``KUBECONFIG`` or ~/.kube/config)."""
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context
        )
        return cls(client, config)

    @classmethod
    def in_cluster(cls, config: KubernetesConfig | None = None) -> KubernetesRuntime:
        """A runtime using the service account of the pod Dockyard runs in."""
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return cls(kubernetes.client.ApiClient(configuration), config)

    # --- plumbing ---

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", self._config.request_timeout_seconds)
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            raise translate_error(error) from error

    async def _call_or_none(
        self, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T | None:
        """Like ``_call``, but a missing object is ``None`` rather than an error."""
        try:
            return await self._call(function, *args, **kwargs)
        except RuntimeRejected as error:
            cause = error.__cause__
            if isinstance(cause, ApiException) and cause.status == 404:
                return None
            raise

    @property
    def _shared(self) -> bool:
        return self._config.namespace_strategy == "shared"

    async def _list(self, kind: str, selector: str) -> list[Any]:
        """Managed objects of one kind in every namespace Dockyard uses."""
        namespaced, everywhere = {
            "deployments": (
                self._apps.list_namespaced_deployment,
                self._apps.list_deployment_for_all_namespaces,
            ),
            "replicasets": (
                self._apps.list_namespaced_replica_set,
                self._apps.list_replica_set_for_all_namespaces,
            ),
            "services": (
                self._core.list_namespaced_service,
                self._core.list_service_for_all_namespaces,
            ),
            "ingresses": (
                self._networking.list_namespaced_ingress,
                self._networking.list_ingress_for_all_namespaces,
            ),
            "horizontalpodautoscalers": (
                self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
                self._autoscaling.list_horizontal_pod_autoscaler_for_all_namespaces,
            ),
            "pods": (self._core.list_namespaced_pod, self._core.list_pod_for_all_namespaces),
        }[kind]
        if self._shared:
            result = await self._call(namespaced, self._config.namespace, label_selector=selector)
        else:
            result = await self._call(everywhere, label_selector=selector)
        return list(result.items)

    async def _deployment(self, container_id: str) -> Any | None:
        if self._shared:
            return await self._call_or_none(
                self._apps.read_namespaced_deployment,
                object_name(container_id),
                self._config.namespace,
            )
        found = await self._list("deployments", f"{LABEL_CONTAINER_ID}={container_id}")
        return found[0] if found else None

    # --- Runtime protocol ---

    async def apply(self, spec: WorkloadSpec) -> None:
        await self._apply(spec)

    async def scale(self, spec: WorkloadSpec, instances: int, *, urgent: bool = False) -> None:
        """Replicas follow the revision's scaling, not ``instances``: ``minInstances`` (at least
        1; a plain Deployment cannot hold a request at zero: scale to zero needs Knative) and a
        CPU HorizontalPodAutoscaler up to ``maxInstances``."""
        await self._apply(spec)

    async def _apply(self, spec: WorkloadSpec) -> None:
        namespace = namespace_for(spec.owner, self._config)
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
        name = object_name(spec.container_id)
        for function, body in (
            (self._apps.patch_namespaced_deployment, make_deployment(spec, self._config)),
            (self._core.patch_namespaced_service, make_service(spec, self._config)),
            (self._networking.patch_namespaced_ingress, make_ingress(spec, self._config)),
        ):
            await self._call(
                function,
                name,
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
            )
        autoscaler = make_autoscaler(spec, self._config)
        if autoscaler is None:
            await self._call_or_none(
                self._autoscaling.delete_namespaced_horizontal_pod_autoscaler, name, namespace
            )
        else:
            await self._call(
                self._autoscaling.patch_namespaced_horizontal_pod_autoscaler,
                name,
                namespace,
                autoscaler,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
            )

    async def retire(self, container_id: str, *, keep: set[int]) -> None:
        """Nothing to do: the Deployment's rolling update removes the old revision's pods."""

    async def remove(self, container_id: str) -> None:
        selector = f"{LABEL_CONTAINER_ID}={container_id}"
        deleters = {
            "horizontalpodautoscalers": (
                self._autoscaling.delete_namespaced_horizontal_pod_autoscaler
            ),
            "ingresses": self._networking.delete_namespaced_ingress,
            "services": self._core.delete_namespaced_service,
            "deployments": self._apps.delete_namespaced_deployment,
        }
        for kind, delete in deleters.items():
            for item in await self._list(kind, selector):
                await self._call_or_none(
                    delete,
                    item.metadata.name,
                    item.metadata.namespace,
                    propagation_policy="Foreground",
                )

    async def observe(self, container_id: str) -> list[RevisionState]:
        deployment = await self._deployment(container_id)
        if deployment is None:
            return []
        template = deployment.spec.template
        revision = _revision_of(template.metadata.labels)
        if revision is None:
            return []
        state = await self._revision_state(container_id, revision, deployment)
        states = [state]
        if state.phase is not Phase.READY:
            serving = await self._serving_old_revision(container_id, revision)
            if serving is not None:
                states.append(RevisionState(container_id, serving, Phase.READY))
        return states

    async def _revision_state(
        self, container_id: str, revision: int, deployment: Any
    ) -> RevisionState:
        namespace = deployment.metadata.namespace
        pods = await self._call(
            self._core.list_namespaced_pod,
            namespace,
            label_selector=f"{LABEL_CONTAINER_ID}={container_id},{LABEL_REVISION}={revision}",
        )
        gpu_models = (deployment.spec.template.metadata.annotations or {}).get(
            ANNOTATION_GPU_MODELS
        )
        moments = self._moments(pods.items)
        for pod in pods.items:
            failure = self._pod_failure(pod, gpu_models)
            if failure is not None:
                reason, message = failure
                return RevisionState(
                    container_id, revision, Phase.FAILED, reason, message, moments=moments
                )
        status = deployment.status
        for condition in (status.conditions if status else None) or []:
            if (
                condition.type == "Progressing"
                and condition.status == "False"
                and condition.reason == "ProgressDeadlineExceeded"
            ):
                return RevisionState(
                    container_id,
                    revision,
                    Phase.FAILED,
                    condition.reason,
                    condition.message or "",
                    moments=moments,
                )
        if self._rollout_complete(deployment):
            return RevisionState(container_id, revision, Phase.READY, moments=moments)
        return RevisionState(container_id, revision, Phase.PENDING, moments=moments)

    def _moments(self, pods: list[Any]) -> tuple[tuple[str, int], ...]:
        """The revision's deploy phases from its pods' status (``k8s_phases``)."""
        return pod_moments(
            (self._api_client.sanitize_for_serialization(pod) for pod in pods),
            app_container=CONTAINER_NAME,
        )

    @staticmethod
    def _rollout_complete(deployment: Any) -> bool:
        status = deployment.status
        if status is None:
            return False
        desired = deployment.spec.replicas if deployment.spec.replicas is not None else 1
        replicas = status.replicas or 0
        updated = status.updated_replicas or 0
        available = status.available_replicas or 0
        return (
            (status.observed_generation or 0) >= (deployment.metadata.generation or 0)
            and updated >= desired
            and replicas == updated
            and available >= desired
        )

    @staticmethod
    def _pod_failure(pod: Any, gpu_models: str | None) -> tuple[str, str] | None:
        status = pod.status
        if status is None:
            return None
        for condition in status.conditions or []:
            if (
                condition.type == "PodScheduled"
                and condition.status == "False"
                and condition.reason == "Unschedulable"
            ):
                message = condition.message or "no node can run the pod"
                if gpu_models:
                    message = f"{message} (wanted a node with GPU model: {gpu_models})"
                return "Unschedulable", message
        for container in [
            *(status.init_container_statuses or []),
            *(status.container_statuses or []),
        ]:
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason in FAILING_WAITING_REASONS:
                message = waiting.message or f"container {container.name}: {waiting.reason}"
                last = container.last_state.terminated if container.last_state else None
                if waiting.reason == "CrashLoopBackOff" and last is not None:
                    message = f"{message} (exit code {last.exit_code})"
                if waiting.reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                    image = container.image or ""
                    if image and image not in message:
                        message = f"{message} (image {image})"
                return waiting.reason, message
        return None

    async def _serving_old_revision(self, container_id: str, current: int) -> int | None:
        """The newest older revision whose ReplicaSet still has available pods, if any."""
        serving = [
            revision
            for replica_set in await self._list(
                "replicasets", f"{LABEL_CONTAINER_ID}={container_id}"
            )
            if (revision := _revision_of(replica_set.spec.template.metadata.labels)) is not None
            and revision != current
            and replica_set.status is not None
            and (replica_set.status.available_replicas or 0) > 0
        ]
        return max(serving) if serving else None

    async def list_managed(self) -> dict[str, set[int]]:
        managed: dict[str, set[int]] = {}
        for kind in ("deployments", "services", "ingresses"):
            for item in await self._list(kind, managed_selector()):
                labels = item.metadata.labels or {}
                container_id = labels.get(LABEL_CONTAINER_ID)
                if container_id is None:
                    continue
                revisions = managed.setdefault(container_id, set())
                if kind == "deployments":
                    labels = item.spec.template.metadata.labels or labels
                revision = _revision_of(labels)
                if revision is not None:
                    revisions.add(revision)
        return managed

    # --- watch ---

    async def watch(self) -> AsyncIterator[RuntimeEvent]:
        queue: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        streams: set[Any] = set()

        def emit(obj: dict[str, Any]) -> None:
            labels = obj.get("metadata", {}).get("labels") or {}
            container_id = labels.get(LABEL_CONTAINER_ID)
            if container_id is not None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                    loop.call_soon_threadsafe(queue.put_nowait, RuntimeEvent(container_id))

        workers = [
            asyncio.create_task(
                asyncio.to_thread(self._watch_kind, kind, function, args, emit, stop, streams)
            )
            for kind, function, args in self._watch_sources()
        ]
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            for stream in list(streams):
                with contextlib.suppress(Exception):
                    stream.shutdown()
            await asyncio.gather(*workers, return_exceptions=True)

    def _watch_sources(self) -> list[tuple[str, Callable[..., Any], tuple[str, ...]]]:
        """What ``watch`` lists and watches: (kind, list function, its positional arguments)."""
        args = (self._config.namespace,) if self._shared else ()
        return [
            (
                "deployments",
                self._apps.list_namespaced_deployment
                if self._shared
                else self._apps.list_deployment_for_all_namespaces,
                args,
            ),
            (
                "pods",
                self._core.list_namespaced_pod
                if self._shared
                else self._core.list_pod_for_all_namespaces,
                args,
            ),
        ]

    def _watch_kind(
        self,
        kind: str,
        list_function: Callable[..., Any],
        args: tuple[str, ...],
        emit: Callable[[dict[str, Any]], None],
        stop: threading.Event,
        streams: set[Any],
    ) -> None:
        """List, then watch from the list's version; relist on ``410 Gone``. Runs in a thread."""
        api = self._api_client
        selector = managed_selector()
        version: str | None = None
        backoff = 0.5
        while not stop.is_set():
            try:
                if version is None:
                    listed = list_function(
                        *args,
                        label_selector=selector,
                        _request_timeout=self._config.request_timeout_seconds,
                    )
                    if isinstance(listed, dict):  # custom objects come as plain JSON
                        version = listed.get("metadata", {}).get("resourceVersion")
                        items = listed.get("items") or []
                    else:
                        version = listed.metadata.resource_version
                        items = listed.items
                    for item in items:
                        emit(api.sanitize_for_serialization(item))
                version = self._watch_once(
                    list_function, args, selector, version, emit, stop, streams
                )
                backoff = 0.5
            except Exception as error:
                if stop.is_set():
                    return
                if isinstance(error, ApiException) and error.status == 410:
                    version = None
                    continue
                if not _is_client_error(error):
                    raise
                logger.warning("watching %s failed, retrying in %.1fs: %s", kind, backoff, error)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _watch_once(
        self,
        list_function: Callable[..., Any],
        args: tuple[str, ...],
        selector: str,
        version: str | None,
        emit: Callable[[dict[str, Any]], None],
        stop: threading.Event,
        streams: set[Any],
    ) -> str | None:
        """One watch request; the version to resume from, or ``None`` to relist."""
        response = list_function(
            *args,
            label_selector=selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._config.watch_timeout_seconds,
            _preload_content=False,
            _request_timeout=(
                self._config.request_timeout_seconds,
                self._config.watch_timeout_seconds + self._config.request_timeout_seconds,
            ),
        )
        streams.add(response)
        try:
            if stop.is_set():  # stopped while connecting: ``shutdown`` may have missed us
                return version
            for line in response:
                if stop.is_set():
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if event.get("type") != "BOOKMARK":
                    emit(obj)
        finally:
            streams.discard(response)
            response.release_conn()
        return version

    # --- logs ---

    async def log_batches(
        self,
        container_id: str,
        *,
        revision: int | None = None,
        follow: bool = True,
        tail: int | None = 100,
        since: datetime.datetime | None = None,
    ) -> AsyncIterator[list[LogLine]]:
        target = await self._log_target(container_id, revision)
        if target is None:
            return
        namespace, revision = target
        selector = f"{LABEL_CONTAINER_ID}={container_id},{LABEL_REVISION}={revision}"
        names = await self._pod_names(namespace, selector)
        options: dict[str, Any] = {
            "container": CONTAINER_NAME,
            "timestamps": True,
            "follow": follow,
        }
        if tail is not None:
            options["tail_lines"] = tail
        if since is not None:
            elapsed = datetime.datetime.now(datetime.UTC) - since
            options["since_seconds"] = max(1, math.ceil(elapsed.total_seconds()))
        if not follow:
            lines = [
                line
                for name in names
                for line in await asyncio.to_thread(
                    self._read_log, namespace, name, options, revision
                )
            ]
            if lines:
                yield sorted(lines, key=lambda line: line.ns)
            return

        async def alive() -> bool:
            return await self._log_revision_alive(container_id, namespace, revision)

        async for batch in self._follow_logs(namespace, selector, names, options, revision, alive):
            yield batch

    async def _log_target(self, container_id: str, revision: int | None) -> tuple[str, int] | None:
        """The namespace of the container and the revision whose logs to read (default: the
        Deployment's current one), or None when the container has no Deployment."""
        deployment = await self._deployment(container_id)
        if deployment is None:
            return None
        if revision is None:
            revision = _revision_of(deployment.spec.template.metadata.labels)
        if revision is None:
            return None
        return deployment.metadata.namespace, revision

    async def _log_revision_alive(self, container_id: str, namespace: str, revision: int) -> bool:
        """Whether pods of the revision may still start: it is the Deployment's current one."""
        deployment = await self._deployment(container_id)
        return (
            deployment is not None
            and _revision_of(deployment.spec.template.metadata.labels) == revision
        )

    async def _pod_names(self, namespace: str, selector: str) -> list[str]:
        pods = await self._call(self._core.list_namespaced_pod, namespace, label_selector=selector)
        return sorted(pod.metadata.name for pod in pods.items)

    def _read_log(
        self, namespace: str, pod: str, options: dict[str, Any], revision: int
    ) -> list[LogLine]:
        try:
            response = self._core.read_namespaced_pod_log(
                pod,
                namespace,
                _preload_content=False,
                _request_timeout=self._config.request_timeout_seconds,
                **options,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            raise translate_error(error) from error
        try:
            return list(self._log_lines(response, revision))
        finally:
            response.release_conn()

    @staticmethod
    def _log_lines(response: Any, revision: int) -> Iterator[LogLine]:
        for raw in response:
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            if text:
                ns, line = parse_log_line(text)
                # Kubernetes interleaves stdout and stderr into one log.
                yield LogLine(ns, line, "stdout", revision)

    async def _follow_logs(
        self,
        namespace: str,
        selector: str,
        pods: list[str],
        options: dict[str, Any],
        revision: int,
        alive: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[list[LogLine]]:
        """Follow the logs of ``pods`` and of every pod of ``selector`` that starts later (an
        autoscaler adding instances, a crashed pod replaced, a revision waking from zero), until
        no pod streams and ``alive`` says no pod of the revision can start any more."""
        queue: asyncio.Queue[LogLine | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        streams: set[Any] = set()
        # A pod found later is read from its first line: all of it is new to the reader.
        later = {k: v for k, v in options.items() if k not in ("tail_lines", "since_seconds")}

        def put(item: LogLine | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def follow(pod: str, pod_options: dict[str, Any]) -> None:
            try:
                # No read timeout: a quiet container is not an error; ``shutdown`` ends the read.
                response = self._core.read_namespaced_pod_log(
                    pod, namespace, _preload_content=False, **pod_options
                )
                streams.add(response)
                try:
                    if stop.is_set():
                        return
                    for line in self._log_lines(response, revision):
                        if stop.is_set():
                            break
                        put(line)
                finally:
                    streams.discard(response)
                    response.release_conn()
            except Exception as error:
                if not stop.is_set():
                    if isinstance(error, ApiException) and error.status in (400, 404):
                        # Not started yet (or gone): look at it again at the next poll.
                        with contextlib.suppress(RuntimeError):
                            loop.call_soon_threadsafe(followed.discard, pod)
                    elif _is_client_error(error):
                        translated = translate_error(error)
                        translated.__cause__ = error
                        put(translated)
                    else:
                        put(error)
            finally:
                put(None)

        followed: set[str] = set()
        workers: list[asyncio.Task[None]] = []

        def start(pod: str, pod_options: dict[str, Any]) -> None:
            followed.add(pod)
            workers.append(asyncio.create_task(asyncio.to_thread(follow, pod, pod_options)))

        for pod in pods:
            start(pod, options)
        running = len(workers)
        poll = self._config.log_pod_poll_seconds
        next_poll = loop.time() + poll
        try:
            while True:
                try:
                    timeout = max(0.0, next_poll - loop.time())
                    items = [await asyncio.wait_for(queue.get(), timeout)]
                except TimeoutError:
                    items = []
                while not queue.empty():  # one batch: whatever arrived meanwhile
                    items.append(queue.get_nowait())
                batch: list[LogLine] = []
                for item in items:
                    if item is None:
                        running -= 1
                    elif isinstance(item, BaseException):
                        if batch:
                            yield batch
                        raise item
                    else:
                        batch.append(item)
                if batch:
                    yield batch
                if running and loop.time() < next_poll:
                    continue
                # Every stream ended, or time to look for pods started since.
                next_poll = loop.time() + poll
                current = await self._pod_names(namespace, selector)
                for pod in current:
                    if pod not in followed:
                        start(pod, later)
                        running += 1
                # A pod that ended is forgotten, so a pod recreated under its name is followed.
                followed.intersection_update(current)
                if not running and not await alive():
                    return
        finally:
            stop.set()
            for stream in list(streams):
                with contextlib.suppress(Exception):
                    stream.shutdown()
            await asyncio.gather(*workers, return_exceptions=True)

    async def close(self) -> None:
        await asyncio.to_thread(self._api_client.close)
