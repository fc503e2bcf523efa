"""The ASGI application: wires settings, database, auth, services and both transports."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app import console, logsafe
from app.auth import make_verifier
from app.autoscale import Autoscaler, AutoscalerOptions
from app.bus import Bus
from app.console import oidc as console_oidc
from app.dataplane.activator import Activator, ActivatorOptions
from app.dataplane.caddy import ProxyOptions
from app.dataplane.controller import DataPlane
from app.dataplane.engine import ProxySupervisor
from app.dataplane.haproxy import HAProxyOptions
from app.dataplane.haproxy_supervisor import HAProxySupervisor, haproxy_binary
from app.dataplane.routes import host_domain
from app.dataplane.supervisor import CaddySupervisor, run_dir
from app.db import installation_id, make_engine, migrate, observations_engine
from app.deps import AppState
from app.domain.gpus import load_catalog
from app.domain.spec import Limits
from app.gql.router import graphql_router
from app.observability import wiring as observability
from app.observability.metrics import Metrics
from app.reconcile import Reconciler, ReconcilerOptions
from app.reconcile.leader import Elector, database_elector
from app.rest import problems
from app.rest.events import router as events_router
from app.rest.logs import router as logs_router
from app.rest.routes import router as rest_router
from app.runtime.base import Capabilities, Runtime, SignalsReady
from app.runtime.factory import make_runtime
from app.runtime.k8s import KubernetesRuntime
from app.runtime.k8s_lease import LeaseElector
from app.runtime.k8s_manifests import KubernetesConfig, Toleration
from app.services import scaling
from app.services.context import ServiceContext
from app.services.scaling import RevisionServing
from app.settings import Settings
from app.streams import LogHub

log = logging.getLogger(__name__)
DEFAULT_PORT = 8000
ALL_CAPABILITIES = Capabilities(autoscales=True, scale_to_zero=True, traffic_split=True)


@dataclass(frozen=True)
class ServeAddress:
    """Where ``dockyard serve`` listens: Caddy on the public address, the API behind it."""

    listen: str
    """``host:port`` Caddy binds: container hosts go to revisions, every other host to the API."""
    directory: Path
    """Caddy's admin socket, pid file and log, and the API's unix socket."""

    @property
    def api_socket(self) -> Path:
        return self.directory / "api.sock"

    @property
    def admin(self) -> str:
        return f"unix/{self.directory / 'caddy-admin.sock'}"


def serve_address(settings: Settings, host: str, port: int) -> ServeAddress:
    """One directory per serve port, so replicas sharing a data dir keep their own Caddy."""
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ServeAddress(listen=listen, directory=run_dir(settings.data_dir, f"serve-{port}"))


def proxy_engine(settings: Settings) -> Literal["caddy", "haproxy"]:
    """The data plane engine ``dockyard serve`` runs: ``auto`` is HAProxy when it is installed."""
    if settings.proxy_engine == "auto":
        return "haproxy" if haproxy_binary(settings.haproxy_bin) is not None else "caddy"
    return settings.proxy_engine


def _data_plane(
    settings: Settings, state: AppState, serve: ServeAddress, activator: Activator | None
) -> DataPlane:
    options = ProxyOptions(
        listen=serve.listen,
        admin=serve.admin,
        domain=host_domain(state.ctx.ingress_domain),
        api=f"unix/{serve.api_socket}",
        trusted_proxies=tuple(settings.proxy_trusted_proxies),
    )
    supervisor: ProxySupervisor
    engine = proxy_engine(settings)
    log.info("data plane engine: %s", engine)
    if engine == "haproxy":
        supervisor = HAProxySupervisor(
            options=HAProxyOptions(
                listen=serve.listen,
                directory=str(serve.directory),
                domain=options.domain,
                api=options.api,
                trusted_proxies=options.trusted_proxies,
            ),
            directory=serve.directory,
            binary=settings.haproxy_bin,
            direct=activator.serves if activator is not None else None,
        )
    else:
        supervisor = CaddySupervisor(
            options=options, directory=serve.directory, binary=settings.caddy_bin
        )
    return DataPlane(
        engine=state.ctx.engine,
        supervisor=supervisor,
        domain=options.domain,
        activator=activator.address if activator is not None else None,
        resync_interval=settings.proxy_resync_seconds,
    )


def build_state(settings: Settings, *, port: int = DEFAULT_PORT) -> AppState:
    """Everything a process needs; migrates the database first."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url, pool_size=settings.database_pool_size)
    migrate(engine)
    ctx = ServiceContext(
        engine=engine,
        catalog=load_catalog(settings.gpu_catalog_file),
        limits=Limits(
            max_cpu=settings.max_cpu,
            max_gpu=settings.max_gpu,
            max_instances=settings.max_instances,
            max_startup_seconds=settings.max_startup_budget_seconds,
            max_gpu_startup_seconds=int(settings.gpu_readiness_timeout_seconds),
        ),
        ingress_domain=settings.ingress_domain or f"localhost:{port}",
    )
    return AppState(settings=settings, ctx=ctx, verifier=make_verifier(settings))


def kubernetes_config(
    settings: Settings, *, ingress_domain: str, gpu_label: str
) -> KubernetesConfig:
    return KubernetesConfig(
        namespace_strategy=settings.k8s_namespace_strategy,
        namespace=settings.k8s_namespace,
        ingress_domain=ingress_domain,
        ingress_class_name=settings.k8s_ingress_class_name,
        ingress_tls_secret=settings.k8s_ingress_tls_secret,
        ingress_annotations=dict(settings.k8s_ingress_annotations),
        gpu_product_label=gpu_label,
        gpu_tolerations=tuple(Toleration(**t) for t in settings.k8s_gpu_tolerations),  # type: ignore[arg-type]
        knative_namespace=settings.k8s_knative_namespace,
        knative_gpu_progress_deadline_seconds=settings.k8s_knative_gpu_progress_deadline_seconds,
    )


def _runtime_from(settings: Settings, state: AppState) -> Runtime | None:
    return make_runtime(
        settings.runtime,
        docker_host=settings.docker_host,
        readiness_timeout=settings.readiness_timeout_seconds,
        gpu_readiness_timeout=settings.gpu_readiness_timeout_seconds,
        stop_timeout=settings.stop_timeout_seconds,
        instance=installation_id(state.ctx.engine),
        docker_labels=settings.docker_labels,
        data_dir=settings.data_dir,
        start_podman=settings.start_podman,
        kubernetes_config=kubernetes_config(
            settings, ingress_domain=state.ctx.ingress_domain, gpu_label=state.ctx.catalog.label
        ),
    )


def _elector(settings: Settings, state: AppState, runtime: Runtime) -> Elector:
    if isinstance(runtime, KubernetesRuntime):
        return LeaseElector(runtime.api_client, namespace=settings.k8s_lease_namespace)
    return database_elector(state.ctx.engine, settings.data_dir)


def _log_hub(
    settings: Settings,
    state: AppState,
    runtime: Runtime | None,
    reconciler: Reconciler | None,
    dataplane: DataPlane | None,
) -> LogHub | None:
    """The live-data provider, when something can feed it: a runtime here, or other replicas."""
    bus = Bus(settings.broadcast_url)
    if runtime is None and not bus.shared:
        return None  # nothing would ever be published: GraphQL falls back to polling status

    def on_remote_change(container_id: str) -> None:
        if reconciler is not None and reconciler.leading:
            reconciler.request(container_id)

    hub = LogHub(
        bus,
        runtime,
        is_leader=lambda: reconciler is not None and reconciler.leading,
        on_remote_change=on_remote_change,
        on_change=dataplane.changed if dataplane is not None else None,
        on_reconnect=dataplane.changed if dataplane is not None else None,
        queue_lines=settings.log_queue_lines,
        demand_heartbeat_seconds=settings.log_demand_heartbeat_seconds,
    )
    state.ctx.listeners.append(hub.service_changed)
    if reconciler is not None:
        reconciler.on_status = hub.status_changed
    state.streams = hub
    return hub


def _serverless(
    settings: Settings, state: AppState, runtime: Runtime | None, reconciler: Reconciler | None
) -> tuple[Activator | None, Autoscaler | None]:
    """The activator and the autoscaler, where Dockyard scales revisions itself (the local
    runtime; Knative autoscales by itself, plain Deployments cannot wait at zero)."""
    if runtime is None or reconciler is None:
        return None, None
    capabilities = runtime.capabilities
    if capabilities.autoscales or not capabilities.scale_to_zero:
        return None, None
    ctx = state.ctx

    async def wake(container_id: str, revision: int, instances: int) -> bool:
        return await run_in_threadpool(
            scaling.wake_revision, ctx, container_id, revision, instances=instances
        )

    async def serving(container_id: str, revision: int) -> RevisionServing:
        return await run_in_threadpool(scaling.revision_serving, ctx, container_id, revision)

    activator = Activator(
        wake=wake,
        serving=serving,
        options=ActivatorOptions(
            max_held=settings.activator_max_held,
            max_wait_seconds=settings.activator_max_wait_seconds,
        ),
    )
    autoscaler = Autoscaler(
        ctx,
        is_leader=lambda: reconciler.leading,
        held=activator.held,
        options=AutoscalerOptions(
            tick_seconds=settings.autoscale_tick_seconds,
            stable_window_seconds=settings.autoscale_stable_window_seconds,
            panic_window_seconds=settings.autoscale_panic_window_seconds,
        ),
    )
    if isinstance(runtime, SignalsReady):
        runtime.ready_listeners.append(activator.instance_ready)
    state.activator, state.autoscaler = activator, autoscaler
    return activator, autoscaler


def create_app(
    settings: Settings | None = None,
    *,
    port: int = DEFAULT_PORT,
    runtime: Runtime | Literal["from-settings"] | None = "from-settings",
    reconciler_options: ReconcilerOptions | None = None,
    serve: ServeAddress | None = None,
) -> FastAPI:
    """The API (REST, GraphQL) and the reconciler; with ``serve``, the Caddy data plane in front
    (``dockyard serve``; in-process tests go without it)."""
    settings = settings or Settings()
    logsafe.install()
    state = build_state(settings, port=port)
    if runtime == "from-settings":
        runtime = _runtime_from(settings, state)
    # Without a runtime nothing runs; the API then accepts every serverless feature.
    state.ctx.capabilities = runtime.capabilities if runtime is not None else ALL_CAPABILITIES
    state.metrics = Metrics()
    reconciler = None
    if runtime is not None:
        reconciler = Reconciler(
            engine=observations_engine(settings.effective_database_url, state.ctx.engine),
            runtime=runtime,
            catalog=state.ctx.catalog,
            options=reconciler_options
            or ReconcilerOptions(resync_interval=settings.reconcile_interval_seconds),
            elector=_elector(settings, state, runtime),
            on_deploy_finished=state.metrics.deploy_finished,
        )
        state.ctx.listeners.append(lambda container_id, _kind: reconciler.request(container_id))
    state.reconciler = reconciler
    activator, autoscaler = _serverless(settings, state, runtime, reconciler)
    dataplane = _data_plane(settings, state, serve, activator) if serve is not None else None
    hub = _log_hub(settings, state, runtime, reconciler, dataplane)
    if dataplane is not None:
        state.ctx.listeners.append(dataplane.changed)
        if reconciler is not None:
            reconciler.on_endpoints = dataplane.publish
            if activator is not None:

                async def on_endpoints(container_id: str) -> None:
                    activator.changed(container_id)  # its wakers read the new endpoints now
                    await dataplane.publish(container_id)

                reconciler.on_endpoints = on_endpoints
            publish = reconciler.on_status

            async def on_status(container_id: str, kind: Literal["status", "deleted"]) -> None:
                dataplane.changed(container_id)
                if activator is not None:
                    activator.changed(container_id)
                if publish is not None:
                    await publish(container_id, kind)

            reconciler.on_status = on_status
        if autoscaler is not None:
            autoscaler.in_flight = dataplane.upstreams

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if activator is not None:
            await activator.start()  # before the data plane, which routes to its sockets
        if dataplane is not None:
            await dataplane.start()
        if hub is not None:
            await hub.start()
        if reconciler is not None:
            await reconciler.start()
        if autoscaler is not None:
            await autoscaler.start()
        try:
            yield
        finally:
            if autoscaler is not None:
                await autoscaler.stop()
            if reconciler is not None:
                await reconciler.stop()
            if dataplane is not None:
                await dataplane.stop()
            if activator is not None:
                await activator.stop()
            if hub is not None:
                await hub.stop()
            if reconciler is not None:
                await reconciler.runtime.close()
                if reconciler.engine is not state.ctx.engine:
                    reconciler.engine.dispose()
            state.ctx.engine.dispose()

    app = FastAPI(
        title="Dockyard",
        version="0.1.0",
        description="Serverless containers on Kubernetes or Docker/Podman. GraphQL at /graphql.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI is served by app.console from local assets, not a CDN
        redoc_url=None,
    )
    app.state.dockyard = state
    app.state.dataplane = dataplane
    problems.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.include_router(rest_router)
    app.include_router(logs_router)
    app.include_router(events_router)
    # GraphQL documents itself (introspection, graphql/schema.graphql), not in the OpenAPI.
    app.include_router(
        graphql_router(allowed_origins=settings.cors_origins),
        prefix="/graphql",
        include_in_schema=False,
    )
    # The body limit (DOCKYARD_MAX_REQUEST_BODY_BYTES) bounds API requests only; traffic to
    # containers goes through Caddy, never through here. observability.install puts it on.

    console.install(
        app,
        dist_dir=settings.console_dir,
        login_path=console_oidc.install(app, settings, state.verifier),
    )
    observability.install(
        app, settings=settings, metrics=state.metrics, hub=hub, reconciler=reconciler
    )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        def ping() -> None:
            with state.ctx.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))

        try:
            await run_in_threadpool(ping)
        except sa.exc.SQLAlchemyError as e:
            return JSONResponse({"status": "unavailable", "reason": str(e)[:200]}, status_code=503)
        body: dict[str, object] = {"status": "ok"}
        if hub is not None:
            body["logStreams"] = {
                "upstreamOpened": hub.upstream.opened,
                "upstreamOpen": hub.upstream.open,
                "upstreamLines": hub.upstream.lines,
                "pumps": hub.pumps,
                "subscribers": hub.local_subscribers,
                # Counted, not tracked: what a leak would show (tests compare them over time).
                "engineStreams": getattr(runtime, "open_streams", 0),
                "asyncioTasks": len(asyncio.all_tasks()),
            }
        return JSONResponse(body)

    return app


def openapi_json() -> str:
    """The REST API's OpenAPI document as committed in ``rest/openapi.json``."""
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(Settings(data_dir=data_dir, runtime="none"))
        app.state.dockyard.ctx.engine.dispose()
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
