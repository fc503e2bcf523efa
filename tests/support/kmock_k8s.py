"""A Kubernetes API emulator for driver tests: kmock, with the gaps the official client hits closed.

kmock 0.8 serves a realistic Kubernetes HTTP surface (URL parsing into resource/namespace/name/
subresource, discovery, Status errors, the reaction DSL) and keeps objects in memory, but it
patches by plain dict merge and ignores most query parameters. The official ``kubernetes`` client
and our driver need more, so ``DockyardKubernetesEmulator`` subclasses kmock's emulator and
replaces the *state transitions* while keeping kmock's storage (``emulator.objects``), routing,
reactions and error rendering:

- writes: POST (create; 409 when present; 404 when the namespace is missing), PUT (replace, with
  optimistic concurrency on ``metadata.resourceVersion``), PATCH as JSON merge, strategic merge
  (lists of objects merged by ``name``; other lists replaced) and server-side apply
  (``application/apply-patch+yaml``: create when absent, merge when present, prune the fields the
  same manager dropped, 409 on a conflicting field owned by another manager unless ``force``);
  the ``status`` subresource is separate from the main resource as in a real API server;
- ``metadata.uid``/``resourceVersion``/``creationTimestamp``/``generation`` stamping (generation
  bumps only when ``spec`` changes);
- DELETE with garbage collection of dependents through ``ownerReferences`` (unless ``Orphan``);
- list: ``labelSelector`` (=, ==, !=, exists, !exists, in, notin), ``fieldSelector`` on name and
  namespace, ``kind``/``apiVersion``/``metadata.resourceVersion`` on the list;
- watch: ``resourceVersion`` resume from an event log, ``410 Gone`` when the version was
  compacted away (``compact()``), ``timeoutSeconds``, ``labelSelector``;
- trailing-slash paths (``/apis/apps/v1/``) are served like the slash-less ones;
- ``pods/log``: a kmock reaction answering ``text/plain``, honouring ``tailLines``,
  ``sinceSeconds``, ``timestamps`` and streaming new lines while ``follow=true``.

Run it with ``EmulatorThread``: the official client is synchronous, so the emulator lives on its own
event loop in a background thread and tests talk to it over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp.web
import attrs
import kmock
import kubernetes.client
import yaml
from kmock._internal import parsing as kmock_parsing

T = TypeVar("T")
Obj = dict[str, Any]

# (group, version, plural) -> (kind, namespaced)
RESOURCES: dict[tuple[str, str, str], tuple[str, bool]] = {
    ("", "v1", "namespaces"): ("Namespace", False),
    ("", "v1", "pods"): ("Pod", True),
    ("", "v1", "services"): ("Service", True),
    ("", "v1", "configmaps"): ("ConfigMap", True),
    ("apps", "v1", "deployments"): ("Deployment", True),
    ("apps", "v1", "replicasets"): ("ReplicaSet", True),
    ("networking.k8s.io", "v1", "ingresses"): ("Ingress", True),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True),
    ("autoscaling", "v2", "horizontalpodautoscalers"): ("HorizontalPodAutoscaler", True),
    ("serving.knative.dev", "v1", "services"): ("Service", True),
    ("serving.knative.dev", "v1", "configurations"): ("Configuration", True),
    ("serving.knative.dev", "v1", "revisions"): ("Revision", True),
    ("serving.knative.dev", "v1", "routes"): ("Route", True),
}
KNATIVE = "serving.knative.dev"
NAMESPACES = kmock.resource(group="", version="v1", plural="namespaces")
PODS = kmock.resource(group="", version="v1", plural="pods")
# Resources whose status is written only through the ``status`` subresource.
_WITH_STATUS_SUBRESOURCE = {
    "pods",
    "services",
    "deployments",
    "replicasets",
    "ingresses",
    "namespaces",
    "horizontalpodautoscalers",
    # Knative Serving's resources (CRDs with the status subresource)
    "configurations",
    "revisions",
    "routes",
}
# The official client decodes these deletions as the object itself, the others as a Status.
_DELETE_RETURNS_OBJECT = {"pods", "services", "namespaces"}
_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- URL parsing --------------------------------------------------------------------------------

_kmock_parse_path = kmock_parsing.parse_path


def parse_path(path: str) -> kmock_parsing.ParsedPath:
    """kmock's URL parser, plus the cluster-scoped ``namespaces`` resource itself.

    kmock reads ``/api/v1/namespaces/x`` as "namespace x, no resource" and fails on
    ``/api/v1/namespaces``; both address Namespace objects.
    """
    parts = path.strip("/").split("/")
    core = len(parts) >= 3 and parts[0] == "api" and parts[2] == "namespaces"
    if core and (len(parts) <= 4 or parts[4] in ("status", "finalize")):
        return kmock_parsing.ParsedPath(
            group="",
            version=parts[1],
            plural="namespaces",
            namespace=None,
            name=parts[3] if len(parts) > 3 else None,
            subresource=parts[4] if len(parts) > 4 else None,
        )
    return _kmock_parse_path(path)


kmock_parsing.parse_path = parse_path  # kmock's request parser looks it up on the module


# --- merging -------------------------------------------------------------------------------------


def _is_keyed_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "name" in item for item in value)
    )


def _merge_objects(base: Any, patch: Any, merge: Callable[[Any, Any], Any]) -> Any:
    """What both merges do with objects: a non-object patch replaces, ``null`` deletes a key,
    any other value is merged into the key's old value by ``merge``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def json_merge(base: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    return _merge_objects(base, patch, json_merge)


def strategic_merge(base: Any, patch: Any) -> Any:
    """JSON merge, except lists of objects with a ``name`` merge item by item on that name.

    The real API server takes the merge key from the schema (``containerPort`` for container
    ports, ``port`` for service ports…); ``name`` covers containers, env, volumes and named ports,
    which is what the driver relies on. ``$patch: delete`` in an item removes it.
    """
    if isinstance(patch, list) and (_is_keyed_list(patch) or not patch) and _is_keyed_list(base):
        result = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, old in enumerate(result) if old["name"] == item["name"]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del result[index]
            elif index is None:
                result.append(copy.deepcopy(item))
            else:
                result[index] = strategic_merge(result[index], item)
        return result
    return _merge_objects(base, patch, strategic_merge)


def prune(live: Any, previous: Any, current: Any) -> Any:
    """Remove from ``live`` what a manager applied before (``previous``) but no longer applies."""
    if isinstance(live, dict) and isinstance(previous, dict):
        current = current if isinstance(current, dict) else {}
        result = dict(live)
        for key, value in previous.items():
            if key not in current:
                result.pop(key, None)
            elif key in result:
                result[key] = prune(result[key], value, current[key])
        return result
    if _is_keyed_list(live) and _is_keyed_list(previous):
        current_items = {item["name"]: item for item in current or [] if isinstance(item, dict)}
        previous_items = {item["name"]: item for item in previous}
        result_list = []
        for item in live:
            name = item["name"]
            if name in previous_items and name not in current_items:
                continue
            if name in previous_items:
                item = prune(item, previous_items[name], current_items[name])
            result_list.append(item)
        return result_list
    return live


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _leaves(sub, (*prefix, key))
    elif _is_keyed_list(value):
        for item in value:
            yield from _leaves(item, (*prefix, f"[name={item['name']}]"))
    else:
        yield prefix, value


# --- selectors -----------------------------------------------------------------------------------


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    for requirement in _split_selector(selector or ""):
        words = requirement.split()
        if len(words) >= 3 and words[1] in ("in", "notin"):
            key, operator = words[0], words[1]
            values = {v.strip() for v in " ".join(words[2:]).strip("()").split(",")}
            if (operator == "in") != (labels.get(key) in values):
                return False
        elif "!=" in requirement:
            key, value = requirement.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in requirement:
            key, value = requirement.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: Obj) -> bool:
    fields = {
        "metadata.name": obj.get("metadata", {}).get("name"),
        "metadata.namespace": obj.get("metadata", {}).get("namespace"),
    }
    for requirement in _split_selector(selector or ""):
        if "!=" in requirement:
            key, value = requirement.split("!=", 1)
            if fields.get(key) == value:
                return False
        else:
            key, value = requirement.replace("==", "=").split("=", 1)
            if fields.get(key) != value:
                return False
    return True


# --- the emulator --------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class DockyardKubernetesEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with Kubernetes write, list, watch and log semantics (see module doc)."""

    pod_logs: dict[tuple[str, str], list[tuple[datetime.datetime, str]]] = attrs.field(factory=dict)
    _resource_version: int = attrs.field(default=0, init=False)
    _event_log: list[tuple[int, Any, Obj]] = attrs.field(factory=list, init=False)
    _compacted_below: int = attrs.field(default=0, init=False)
    _results: dict[int, Obj] = attrs.field(factory=dict, init=False)
    _applied: dict[tuple[Any, str | None, str], dict[str, Obj]] = attrs.field(
        factory=dict, init=False
    )
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for (group, version, plural), (kind, namespaced) in RESOURCES.items():
            key = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                namespaced=namespaced,
                singular=kind.lower(),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources={"status", "log"} if plural == "pods" else {"status"},
            )
        self.fallback[kmock.method.PUT] << self._serve_result
        (
            self[PODS, kmock.subresource("log")]
            << kmock.headers({"Content-Type": "text/plain; charset=utf-8"})
            << self._serve_log
        )

    # --- helpers usable from tests (on the emulator loop) ---

    @property
    def resource_version(self) -> int:
        return self._resource_version

    def compact(self) -> None:
        """Forget the event history: watches from any older version get ``410 Gone``."""
        self._compacted_below = self._resource_version

    async def append_log(
        self, namespace: str, pod: str, line: str, timestamp: datetime.datetime | None = None
    ) -> None:
        stamp = timestamp or datetime.datetime.now(datetime.UTC)
        self.pod_logs.setdefault((namespace, pod), []).append((stamp, line))
        await self._notify()

    async def close_streams(self) -> None:
        """End every open watch and log stream (before the server shuts down)."""
        self._closing = True
        await self._notify()

    def get(
        self, plural: str, namespace: str | None, name: str, group: str | None = None
    ) -> Obj | None:
        resource = self._resource_by_plural(plural, group)
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    # --- internals ---

    def _resource_by_plural(self, plural: str, wanted_group: str | None = None) -> Any:
        for group, version, known in RESOURCES:
            if known == plural and (wanted_group is None or group == wanted_group):
                return kmock.resource(group=group, version=version, plural=plural)
        raise KeyError(plural)

    def _kind(self, resource: Any) -> tuple[str, str, bool]:
        group, version, plural = resource.group, resource.version, resource.plural
        kind, namespaced = RESOURCES.get((group, version, plural), (plural.capitalize(), True))
        return kind, f"{group}/{version}" if group else version, namespaced

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        condition = self._condition()
        async with condition:
            condition.notify_all()

    def _live(self, key: tuple[Any, str | None, str]) -> Obj | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _record(self, resource: Any, event_type: str, obj: Obj) -> None:
        self._event_log.append(
            (self._resource_version, resource, {"type": event_type, "object": obj})
        )

    def _store(self, key: tuple[Any, str | None, str], obj: Obj, *, created: bool) -> Obj:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self.objects[key] = obj
        self._record(key[0], "ADDED" if created else "MODIFIED", copy.deepcopy(obj))
        return obj

    def _remove(self, key: tuple[Any, str | None, str], *, cascade: bool) -> Obj:
        obj = self._live(key)
        assert obj is not None
        self.objects[key].delete()
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        self._record(key[0], "DELETED", copy.deepcopy(obj))
        uid = obj["metadata"].get("uid")
        if cascade and uid:
            for other_key, other in list(self.objects.items()):
                if other.deleted:
                    continue
                owners = other.raw.get("metadata", {}).get("ownerReferences", [])
                if any(owner.get("uid") == uid for owner in owners):
                    self._remove(other_key, cascade=True)
        return obj

    def _namespace_must_exist(self, resource: Any, namespace: str | None) -> None:
        _, _, namespaced = self._kind(resource)
        if (
            namespaced
            and namespace is not None
            and self._live((NAMESPACES, None, namespace)) is None
        ):
            raise _error(404, "NotFound", f'namespaces "{namespace}" not found')

    def _stamp_new(self, resource: Any, namespace: str | None, name: str, body: Obj) -> Obj:
        kind, api_version, namespaced = self._kind(resource)
        obj = copy.deepcopy(body)
        obj["kind"], obj["apiVersion"] = kind, api_version
        meta = obj.setdefault("metadata", {})
        meta["name"] = name
        if namespaced:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if resource.plural in _WITH_STATUS_SUBRESOURCE:
            obj.pop("status", None)
            if resource.plural == "pods":
                obj["status"] = {"phase": "Pending"}
            if resource.plural == "namespaces":
                obj["status"] = {"phase": "Active"}
        return obj

    def _finish_update(self, resource: Any, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """Keep identity fields, separate status from the rest, bump generation on spec change."""
        if resource.plural in _WITH_STATUS_SUBRESOURCE:
            if subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        kind, api_version, _ = self._kind(resource)
        new["kind"], new["apiVersion"] = kind, api_version
        meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        if new.get("spec") != old.get("spec"):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        return new

    def _body(self, request: Any) -> Obj:
        data = request.data
        if not isinstance(data, dict):
            data = yaml.safe_load(request.text or "{}")
        if not isinstance(data, dict) and not isinstance(data, list):
            raise _error(400, "BadRequest", "the request body must be an object")
        return data  # type: ignore[no-any-return]

    async def _mutate(self, request: Any) -> Obj | None:
        resource, namespace, name = request.resource, request.namespace, request.name
        method, subresource = request.method, request.subresource
        if subresource not in (None, "status"):
            return None
        if method == kmock.method.POST and name is None:
            body = self._body(request)
            name = body.get("metadata", {}).get("name")
            if not name:
                raise _error(422, "Invalid", "metadata.name: Required value")
            namespace = namespace or body.get("metadata", {}).get("namespace")
            self._namespace_must_exist(resource, namespace)
            key = (resource, namespace, name)
            if self._live(key) is not None:
                raise _error(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
            return self._store(key, self._stamp_new(resource, namespace, name, body), created=True)
        if name is None:
            return None
        key = (resource, namespace, name)
        old = self._live(key)
        if method == kmock.method.PUT:
            body = self._body(request)
            if old is None:
                raise _error(404, "NotFound", f'{resource.plural} "{name}" not found')
            expected = body.get("metadata", {}).get("resourceVersion")
            if expected and expected != old["metadata"]["resourceVersion"]:
                raise _error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource.plural} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and try "
                    "again",
                )
            return self._store(
                key, self._finish_update(resource, old, body, subresource), created=False
            )
        if method == kmock.method.PATCH:
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            body = self._body(request)
            if content_type == _APPLY:
                return self._apply(request, key, old, body)
            if old is None:
                raise _error(404, "NotFound", f'{resource.plural} "{name}" not found')
            if content_type == _JSON_PATCH:
                raise _error(415, "UnsupportedMediaType", "json-patch is not emulated")
            merged = (json_merge if content_type == _MERGE else strategic_merge)(old, body)
            return self._store(
                key, self._finish_update(resource, old, merged, subresource), created=False
            )
        if method == kmock.method.DELETE:
            if old is None:
                raise _error(404, "NotFound", f'{resource.plural} "{name}" not found')
            options = request.data if isinstance(request.data, dict) else {}
            policy = options.get("propagationPolicy") or request.params.get("propagationPolicy")
            removed = self._remove(key, cascade=policy != "Orphan")
            if resource.plural in _DELETE_RETURNS_OBJECT:
                return removed
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "kind": resource.plural,
                    "uid": removed["metadata"]["uid"],
                },
            }
        return None

    def _apply(self, request: Any, key: Any, old: Obj | None, body: Obj) -> Obj:
        resource, namespace, name = key
        manager = request.params.get("fieldManager")
        if not manager:
            raise _error(400, "BadRequest", "PATCH: fieldManager is required for apply requests")
        if body.get("metadata", {}).get("name", name) != name:
            raise _error(400, "BadRequest", "the name of the object does not match the URL")
        kind, api_version, _ = self._kind(resource)
        if body.get("kind") != kind or body.get("apiVersion") != api_version:
            raise _error(400, "BadRequest", f"apply needs kind {kind} and apiVersion {api_version}")
        managers = self._applied.setdefault(key, {}) if old is not None else {}
        if request.params.get("force") != "true":
            mine = dict(_leaves(body))
            for other, applied in managers.items():
                if other == manager:
                    continue
                clashes = [
                    ".".join(path)
                    for path, value in _leaves(applied)
                    if path in mine and mine[path] != value
                ]
                if clashes:
                    raise _error(
                        409,
                        "Conflict",
                        f'Apply failed with conflicts: conflict with "{other}": '
                        + ", ".join(clashes),
                    )
        if old is None:
            self._namespace_must_exist(resource, namespace)
            result = self._store(
                key, self._stamp_new(resource, namespace, name, body), created=True
            )
            self._applied[key] = {manager: copy.deepcopy(body)}
            return result
        previous = managers.get(manager, {})
        merged = strategic_merge(prune(old, previous, body), body)
        managers[manager] = copy.deepcopy(body)
        return self._store(
            key, self._finish_update(resource, old, merged, request.subresource), created=False
        )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Serve ``/apis/apps/v1/`` like ``/apis/apps/v1``: normalise before kmock parses the URL.
        path = raw_request.rel_url.path
        if len(path) > 1 and path.endswith("/"):
            url = raw_request.rel_url
            fixed = url.with_path(path.rstrip("/")).with_query(url.query)
            raw_request = raw_request.clone(rel_url=fixed)
        return await super().__call__(raw_request)

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.resource.plural:
            async with self._lock:
                result = await self._mutate(request)
            if result is not None:
                self._results[request.id] = result
                await self._notify()
        # Skip kmock's own state changes (KubernetesEmulator._handle): they were done above.
        return await kmock.RawHandler._handle(self, request)

    async def _serve_result(self, request: Any) -> Obj:
        return self._results.pop(request.id)

    _serve_create = _serve_update = _serve_delete = _serve_result

    def _matches(self, request: Any, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        return label_selector_matches(
            request.params.get("labelSelector"), meta.get("labels") or {}
        ) and field_selector_matches(request.params.get("fieldSelector"), obj)

    def _current(self, request: Any) -> list[Obj]:
        return [
            copy.deepcopy(obj.raw)
            for (resource, _, _), obj in self.objects.items()
            if resource == request.resource and not obj.deleted and self._matches(request, obj.raw)
        ]

    async def _serve_list(self, request: Any) -> Obj:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        kind, api_version, _ = self._kind(request.resource)
        async with self._lock:
            items = self._current(request)
            version = self._resource_version
        return {
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(version)},
            "items": items,
        }

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        yield b""  # send the headers now: a watch may stay silent for a long time
        loop = asyncio.get_running_loop()
        timeout = request.params.get("timeoutSeconds")
        deadline = loop.time() + float(timeout) if timeout else None
        since = request.params.get("resourceVersion")
        async with self._lock:
            if since in (None, "", "0"):
                initial = [{"type": "ADDED", "object": obj} for obj in self._current(request)]
                cursor = len(self._event_log)
            else:
                if int(since) < self._compacted_below:
                    initial, cursor = [], -1
                else:
                    initial = []
                    cursor = next(
                        (i for i, (rv, _, _) in enumerate(self._event_log) if rv > int(since)),
                        len(self._event_log),
                    )
        if cursor < 0:
            yield {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {since} ({self._compacted_below})",
                    "reason": "Expired",
                    "code": 410,
                },
            }
            return
        for event in initial:
            yield event
        condition = self._condition()
        while not self._closing:
            pending = self._event_log[cursor:]
            cursor += len(pending)
            for _, resource, event in pending:
                if resource == request.resource and self._matches(request, event["object"]):
                    yield event
            async with condition:
                if cursor < len(self._event_log) or self._closing:
                    continue
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(condition.wait(), remaining)

    def _log_lines(self, request: Any, start: int) -> list[str]:
        key = (request.namespace, request.name)
        entries = self.pod_logs.get(key, [])[start:]
        since = request.params.get("sinceSeconds")
        if since:
            threshold = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=int(since))
            entries = [(stamp, line) for stamp, line in entries if stamp >= threshold]
        tail = request.params.get("tailLines")
        if tail and start == 0:
            entries = entries[-int(tail) :] if int(tail) else []
        stamps = request.params.get("timestamps") == "true"
        return [
            (f"{stamp.strftime('%Y-%m-%dT%H:%M:%S.%f')}000Z {line}" if stamps else line) + "\n"
            for stamp, line in entries
        ]

    def _serve_log(self, request: Any) -> AsyncIterator[bytes]:
        if self._live((PODS, request.namespace, request.name)) is None:
            raise _error(404, "NotFound", f'pods "{request.name}" not found')
        return self._stream_log(request)

    async def _stream_log(self, request: Any) -> AsyncIterator[bytes]:
        yield b""
        key = (request.namespace, request.name)
        for line in self._log_lines(request, 0):
            yield line.encode()
        sent = len(self.pod_logs.get(key, []))
        if request.params.get("follow") != "true":
            return
        condition = self._condition()
        while not self._closing and self._live((PODS, request.namespace, request.name)):
            for line in self._log_lines(request, sent):
                yield line.encode()
            sent = len(self.pod_logs.get(key, []))
            async with condition:
                if sent == len(self.pod_logs.get(key, [])) and not self._closing:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(condition.wait(), 1.0)


class EmulatorThread:
    """The emulator on its own event loop in a background thread, for synchronous clients."""

    def __init__(self, *, knative: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.emulator = DockyardKubernetesEmulator()
        if not knative:  # a cluster without Knative Serving: discovery does not list it
            for key in [key for key in self.emulator.resources if key.group == KNATIVE]:
                del self.emulator.resources[key]
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="kmock-k8s")
        self._stack = contextlib.AsyncExitStack()
        self.port = 0

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def start(self) -> EmulatorThread:
        self._thread.start()
        self.port = self.call(self._start())
        return self

    async def _start(self) -> int:
        # The emulator's aiohttp access lines are noise, and a line written after pytest closed
        # the stream it was captured to printed "--- Logging error ---" tracebacks in CI.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        await self._stack.enter_async_context(self.emulator)
        server = await self._stack.enter_async_context(kmock.Server(self.emulator))
        for name in ("default", "dockyard-workloads"):
            key = (NAMESPACES, None, name)
            stamped = self.emulator._stamp_new(NAMESPACES, None, name, {"metadata": {"name": name}})
            self.emulator._store(key, stamped, created=True)
        return int(server.port)

    def stop(self) -> None:
        # A client that keeps a watch open (a runtime under test not closed yet) must not hang
        # the teardown: each step gets a bound, then the loop stops regardless.
        for step in (self.emulator.close_streams, self._stack.aclose):
            future = asyncio.run_coroutine_threadsafe(step(), self.loop)
            try:
                future.result(timeout=10)
            except TimeoutError:
                future.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_client(self) -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return kubernetes.client.ApiClient(configuration)

    # Synchronous shortcuts for tests.

    def append_log(
        self, namespace: str, pod: str, line: str, timestamp: datetime.datetime | None = None
    ) -> None:
        self.call(self.emulator.append_log(namespace, pod, line, timestamp))

    def compact(self) -> None:
        async def compact() -> None:
            self.emulator.compact()

        self.call(compact())

    def get(
        self, plural: str, namespace: str | None, name: str, group: str | None = None
    ) -> Obj | None:
        async def read() -> Obj | None:
            return self.emulator.get(plural, namespace, name, group)

        return self.call(read())

    def dumps(self) -> str:
        return json.dumps([key[1:] for key in self.emulator.objects], default=str)
