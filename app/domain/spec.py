"""The container spec users send, and its validation.

Both transports hand the raw JSON object to the services, which validate it here, so REST and
GraphQL accept and refuse exactly the same input with exactly the same messages. Every message
names the field (by its JSON name) and says how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from app.domain.errors import FieldError, ValidationFailed
from app.domain.gpus import GpuCatalog
from app.domain.quantity import parse_quantity

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_IMAGE = 512
MAX_QUANTITY = 32
MAX_LIST_ITEMS = 256
MAX_ITEM_LENGTH = 4096
MAX_ENV_ENTRIES = 256
MAX_ENV_KEY = 256
MAX_ENV_VALUE = 32 * 1024
MAX_DESIRED_GPUS = 25
MAX_CONCURRENCY = 1000
MAX_SCALE_TO_ZERO_AFTER = 86400
MAX_PROBE_SECONDS = 3600
MAX_PROBE_THRESHOLD = 1000
MAX_PROBE_PATH = 2048
PROBE_KINDS = ("startup", "readiness", "liveness")
PROBE_ACTIONS = ("httpGet", "tcpSocket", "exec")
PROBE_DEFAULTS: dict[str, int] = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
"""Kubernetes' probe defaults (and lower bounds: 0 for the delay, 1 for the rest)."""
DEFAULT_STARTUP_BUDGET_SECONDS = 120
KNATIVE_REQUIRED = "Knative Serving is required (this cluster runs plain Deployments)"

SCALING_DEFAULTS: dict[str, int] = {
    "minInstances": 0,
    "maxInstances": 100,
    "concurrency": 80,
    "scaleToZeroAfterSeconds": 900,
}
"""Cloud Run's defaults (as ``app.runtime.base.Scaling``): scale to zero after 15 idle minutes,
80 in-flight requests per instance, at most 100 instances (or the operator's lower limit)."""

MAX_EXEC_BYTES = 1024 * 1024
"""Most bytes the environment, command and arguments may take together. Linux refuses to exec a
process whose argument and environment strings (with their pointers) exceed ARG_MAX, a quarter
of the stack limit: 2 MiB with the usual 8 MiB. Half of it is left to what the image and the
engine add (PATH, HOSTNAME…). One ``KEY=VALUE`` is also capped by MAX_ARG_STRLEN (128 KiB), which
``MAX_ENV_VALUE`` keeps far below."""
POINTER_BYTES = 8

DEFAULTS: dict[str, Any] = {
    "cpu": 1,
    "ram": "512Mi",
    "gpu": 0,
    "ephemeralStorage": "1Gi",
    "port": 8080,
    "env": {},
    "command": None,
    "arguments": None,
    "desiredGPUs": [],
    "scaling": {},
}

_EXPECTED: dict[str, str] = {
    "name": "a string: a DNS-1123 label such as my-service",
    "image": "a string with an explicit tag or digest, e.g. nginx:1.27",
    "cpu": "a number greater than 0, e.g. 1 or 0.5",
    "ram": "a string holding a Kubernetes quantity, e.g. 512Mi or 2Gi",
    "gpu": "a whole number of GPUs, 0 or more",
    "ephemeralStorage": "a string holding a Kubernetes quantity, e.g. 10Gi",
    "command": 'null or a list of strings, e.g. ["/bin/server"]',
    "arguments": 'null or a list of strings, e.g. ["--verbose"]',
    "env": 'an object mapping variable names to string values, e.g. {"FOO": "bar"}',
    "port": 'a port number 1-65535, as a number or a string, e.g. "8080"',
    "desiredGPUs": 'null or a list of GPU model codes or names, e.g. ["a100"]',
    "scaling": 'an object, e.g. {"minInstances": 0, "maxInstances": 10, "concurrency": 80}',
    "scaling.minInstances": "a whole number of instances, 0 or more",
    "scaling.maxInstances": "a whole number of instances, 1 or more",
    "scaling.concurrency": f"a whole number of in-flight requests per instance, "
    f"1-{MAX_CONCURRENCY}",
    "scaling.scaleToZeroAfterSeconds": f"a whole number of seconds, 0-{MAX_SCALE_TO_ZERO_AFTER}",
}


_ASCII_PORT = re.compile(r"[0-9]{1,5}")
# Kubernetes quantities and Docker limits are signed 64-bit numbers of bytes.
MAX_QUANTITY_BYTES = 2**63 - 1


def _integral(value: object) -> object:
    """JSON ``3.0`` is the integer 3 (as JSON Schema's ``integer`` says); ``3.5`` stays invalid."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _port(value: object) -> object:
    # ASCII digits only: str.isdigit() also admits "²" and Arabic-Indic digits.
    if isinstance(value, str) and _ASCII_PORT.fullmatch(value.strip()):
        return int(value.strip())
    return _integral(value)


WholeNumber = Annotated[StrictInt, BeforeValidator(_integral)]


class ScalingInput(BaseModel):
    """The ``scaling`` object of a request; unset fields keep their default (or current) value."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=False)

    min_instances: WholeNumber | None = None
    max_instances: WholeNumber | None = None
    concurrency: WholeNumber | None = None
    scale_to_zero_after_seconds: WholeNumber | None = None


SCALING_FIELDS = tuple(info.alias or name for name, info in ScalingInput.model_fields.items())


ProbePort = Annotated[StrictInt | None, BeforeValidator(_port)]
ProbeInt = Annotated[StrictInt | None, BeforeValidator(_integral)]

PROBE_BOUNDS: dict[str, tuple[int, int]] = {
    "initialDelaySeconds": (0, MAX_PROBE_SECONDS),
    "periodSeconds": (1, MAX_PROBE_SECONDS),
    "timeoutSeconds": (1, MAX_PROBE_SECONDS),
    "successThreshold": (1, MAX_PROBE_THRESHOLD),
    "failureThreshold": (1, MAX_PROBE_THRESHOLD),
}

# The published JSON Schema states every rule of a probe that JSON Schema can state (so a
# document valid by it is accepted); the checks themselves, with their messages, are in
# ``_probe_errors``. Cross-field rules are in ProbesInput's description.


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_PORT_SCHEMA = _nullable(
    {
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": 65535},
            {"type": "string", "pattern": "^[1-9][0-9]{0,3}$"},
        ],
        "description": "Default: the container's port.",
    }
)


def _action_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    properties = schema["properties"]
    if "port" in properties:
        properties["port"] = _PORT_SCHEMA
    if "path" in properties:
        properties["path"] = _nullable(
            {"type": "string", "pattern": "^/[!-~]*$", "maxLength": MAX_PROBE_PATH}
        )
    if "command" in properties:
        properties["command"] = {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_LIST_ITEMS,
            "items": {"type": "string", "pattern": "^[^\\x00]*$", "maxLength": MAX_ITEM_LENGTH},
        }
        schema["required"] = ["command"]


def _probe_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    properties = schema["properties"]
    for action in PROBE_ACTIONS:
        refs = [item for item in properties[action]["anyOf"] if "$ref" in item]
        properties[action] = refs[0]
    schema["oneOf"] = [{"required": [action]} for action in PROBE_ACTIONS]
    for key, (low, high) in PROBE_BOUNDS.items():
        if key == "successThreshold" and model is not ProbeInput:
            high = 1
        properties[key] = _nullable(
            {"type": "integer", "minimum": low, "maximum": high, "default": PROBE_DEFAULTS[key]}
        )


def _probes_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    schema["properties"]["startupBudgetSeconds"] = _nullable(
        {"type": "integer", "minimum": 1, "maximum": Limits.max_gpu_startup_seconds}
    )


_ACTION_CONFIG = ConfigDict(
    extra="forbid",
    alias_generator=to_camel,
    populate_by_name=False,
    json_schema_extra=_action_schema,
)
_PROBE_CONFIG = ConfigDict(
    extra="forbid",
    alias_generator=to_camel,
    populate_by_name=False,
    json_schema_extra=_probe_schema,
)


class HttpGetInput(BaseModel):
    """``httpGet``: Dockyard (or the kubelet) GETs ``path`` on ``port``; 200-399 passes."""

    model_config = _ACTION_CONFIG

    path: StrictStr | None = Field(None, max_length=MAX_PROBE_PATH)
    port: ProbePort = None


class TcpSocketInput(BaseModel):
    """``tcpSocket``: the port accepts a TCP connection."""

    model_config = _ACTION_CONFIG

    port: ProbePort = None


class ExecInput(BaseModel):
    """``exec``: the command, run inside the container, exits 0."""

    model_config = _ACTION_CONFIG

    command: list[Annotated[StrictStr, Field(max_length=MAX_ITEM_LENGTH)]] | None = Field(
        None, max_length=MAX_LIST_ITEMS
    )


class ProbeInput(BaseModel):
    """A readiness probe: exactly one of httpGet, tcpSocket or exec, and Kubernetes' timing
    fields (unset: Kubernetes' defaults)."""

    model_config = _PROBE_CONFIG

    http_get: HttpGetInput | None = None
    tcp_socket: TcpSocketInput | None = None
    exec_: ExecInput | None = Field(None, alias="exec")
    initial_delay_seconds: ProbeInt = None
    period_seconds: ProbeInt = None
    timeout_seconds: ProbeInt = None
    success_threshold: ProbeInt = None
    failure_threshold: ProbeInt = None


class SingleSuccessProbeInput(ProbeInput):
    """A startup or liveness probe: as a readiness probe, but ``successThreshold`` must be 1."""


class ProbesInput(BaseModel):
    """Health probes; null or absent: the port accepting TCP connections is the readiness check.
    Rules across fields: the start-up budget (``startupBudgetSeconds``, or the startup probe's
    ``initialDelaySeconds + failureThreshold * periodSeconds``; give only one of them) is at most
    DOCKYARD_MAX_STARTUP_BUDGET_SECONDS (240) without GPUs and
    DOCKYARD_GPU_READINESS_TIMEOUT_SECONDS (1800) with GPUs."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=False,
        json_schema_extra=_probes_schema,
    )

    startup: SingleSuccessProbeInput | None = None
    readiness: ProbeInput | None = None
    liveness: SingleSuccessProbeInput | None = None
    startup_budget_seconds: ProbeInt = None


def _aliases(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(info.alias or name for name, info in model.model_fields.items())


PROBES_FIELDS = _aliases(ProbesInput)
PROBE_FIELDS = _aliases(ProbeInput)
_ACTION_FIELDS = {
    "httpGet": _aliases(HttpGetInput),
    "tcpSocket": _aliases(TcpSocketInput),
    "exec": _aliases(ExecInput),
}

StrList = list[Annotated[StrictStr, Field(max_length=MAX_ITEM_LENGTH)]]


class ContainerInput(BaseModel):
    """The JSON object of a create or update request; every field optional at this stage."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=False)

    name: StrictStr | None = Field(None, max_length=63)
    image: StrictStr | None = Field(None, max_length=MAX_IMAGE)
    cpu: StrictInt | StrictFloat | None = None
    ram: StrictStr | None = Field(None, max_length=MAX_QUANTITY)
    gpu: Annotated[StrictInt | None, BeforeValidator(_integral)] = None
    ephemeral_storage: StrictStr | None = Field(None, max_length=MAX_QUANTITY)
    command: StrList | None = Field(None, max_length=MAX_LIST_ITEMS)
    arguments: StrList | None = Field(None, max_length=MAX_LIST_ITEMS)
    env: dict[StrictStr, Annotated[StrictStr, Field(max_length=MAX_ENV_VALUE)]] | None = Field(
        None, max_length=MAX_ENV_ENTRIES
    )
    port: Annotated[StrictInt | None, BeforeValidator(_port)] = None
    desired_gpus: list[Annotated[StrictStr, Field(max_length=64)]] | None = Field(
        None, alias="desiredGPUs", max_length=MAX_DESIRED_GPUS
    )
    scaling: ScalingInput | None = None
    probes: ProbesInput | None = None


FIELDS = tuple(info.alias or name for name, info in ContainerInput.model_fields.items())


class ScalingSpec(BaseModel):
    """How many instances of a revision may run; part of the revision's spec (so a rollback
    brings the old scaling back). Specs stored before scaling existed read as the defaults."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    min_instances: int = SCALING_DEFAULTS["minInstances"]
    max_instances: int = SCALING_DEFAULTS["maxInstances"]
    concurrency: int = SCALING_DEFAULTS["concurrency"]
    """Target of in-flight requests per instance."""
    scale_to_zero_after_seconds: int = SCALING_DEFAULTS["scaleToZeroAfterSeconds"]
    """Idle time without requests after which the revision drops to ``min_instances``."""

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


class ProbeSpec(BaseModel):
    """One probe with every default filled in; ``action`` is ``httpGet``, ``tcpSocket`` or
    ``exec``. ``port`` is the container port probed (httpGet, tcpSocket)."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    http_get: dict[str, Any] | None = None
    tcp_socket: dict[str, Any] | None = None
    exec_: dict[str, Any] | None = Field(None, alias="exec")
    initial_delay_seconds: int = PROBE_DEFAULTS["initialDelaySeconds"]
    period_seconds: int = PROBE_DEFAULTS["periodSeconds"]
    timeout_seconds: int = PROBE_DEFAULTS["timeoutSeconds"]
    success_threshold: int = PROBE_DEFAULTS["successThreshold"]
    failure_threshold: int = PROBE_DEFAULTS["failureThreshold"]


class ProbesSpec(BaseModel):
    """The health probes of a revision (part of its spec, so they travel with a rollback)."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    startup: ProbeSpec | None = None
    readiness: ProbeSpec | None = None
    liveness: ProbeSpec | None = None
    startup_budget_seconds: int | None = None
    """How long an instance may take to become ready; None: the runtime's default (120 s, or
    the GPU budget), or the startup probe's ``initialDelaySeconds + failureThreshold *
    periodSeconds`` when there is one."""

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


class ContainerSpec(BaseModel):
    """A complete, valid container spec; revisions snapshot exactly this."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    name: str
    image: str
    cpu: float
    ram: str
    gpu: int
    ephemeral_storage: str
    command: list[str] | None
    arguments: list[str] | None
    env: dict[str, str]
    port: int
    desired_gpus: list[str] = Field(alias="desiredGPUs")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    probes: ProbesSpec | None = None
    """None: the runtime's default check (the port accepts TCP connections)."""

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True, mode="json", exclude={"probes"})
        if self.probes is not None:
            # Specs without probes keep the JSON they had before probes existed.
            data["probes"] = self.probes.to_json()
        return data


@dataclass(frozen=True)
class Limits:
    """Operator-configured bounds on what a container may ask for."""

    max_cpu: float = 64
    max_gpu: int = 8
    max_instances: int = 100
    max_startup_seconds: int = 240
    """Largest start-up budget of a revision without GPUs (Cloud Run's 240 s)."""
    max_gpu_startup_seconds: int = 1800
    """Largest start-up budget of a GPU revision (model loading)."""


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or "body"


def _allowed_fields(loc: tuple[Any, ...]) -> tuple[str, ...]:
    if loc[:1] == ("scaling",) and len(loc) == 2:
        return SCALING_FIELDS
    if loc[:1] == ("probes",):
        if len(loc) == 2:
            return PROBES_FIELDS
        if len(loc) == 3:
            return PROBE_FIELDS
        if len(loc) == 4:
            return _ACTION_FIELDS.get(str(loc[2]), ())
    return FIELDS


def _probe_expected(loc: tuple[Any, ...]) -> str | None:
    """What a field of ``probes`` must be (for type errors), from its JSON location."""
    if not loc or loc[0] != "probes":
        return None
    last = str(loc[-1])
    if len(loc) == 1:
        return 'null or an object, e.g. {"readiness": {"httpGet": {"path": "/ready"}}}'
    if len(loc) == 2 and last == "startupBudgetSeconds":
        return "a whole number of seconds, e.g. 300"
    if len(loc) == 2:
        return 'null or an object with one of httpGet, tcpSocket or exec, e.g. {"tcpSocket": {}}'
    if len(loc) == 3 and last in _ACTION_FIELDS:
        return {
            "httpGet": 'an object, e.g. {"path": "/ready", "port": 8080}',
            "tcpSocket": 'an object, e.g. {"port": 8080}',
            "exec": 'an object, e.g. {"command": ["cat", "/tmp/ready"]}',
        }[last]
    if len(loc) == 3:
        return "a whole number"
    if last == "port":
        return "a port number 1-65535, e.g. 8080 (default: the container's port)"
    if last == "path":
        return 'a string starting with "/", e.g. "/ready"'
    if last == "command" or isinstance(loc[-1], int):
        return 'a non-empty list of strings, e.g. ["cat", "/tmp/ready"]'
    return None


def _message(error: Mapping[str, Any]) -> str:
    kind = str(error["type"])
    loc = error["loc"]
    top = str(loc[0]) if loc else ""
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return f"unknown field; allowed fields: {', '.join(_allowed_fields(loc))}"
    if kind in ("model_type", "dict_type") and not loc:
        return "the request body must be a JSON object"
    if kind in ("too_long", "too_short", "string_too_long", "string_too_short"):
        return str(error["msg"]).replace("Value", "must be a value", 1).lower()
    if kind == "value_error":
        return str(error["ctx"]["error"])
    dotted = ".".join(str(part) for part in loc)
    if dotted in _EXPECTED:
        return f"must be {_EXPECTED[dotted]}"
    if expected := _probe_expected(tuple(loc)):
        return f"must be {expected}"
    if top == "env":
        return "values must be strings (quote numbers and booleans)"
    if top in ("command", "arguments", "desiredGPUs"):
        return "each item must be a string"
    return str(error["msg"])


def _field_errors(error: ValidationError) -> list[FieldError]:
    seen: dict[str, FieldError] = {}
    for item in error.errors():
        loc = tuple(item["loc"])
        # A union reports one error per member type; the first one per field is enough.
        loc = tuple(
            part
            for part in loc
            if part not in ("int", "float", "str")
            and not (isinstance(part, str) and part.startswith("function-"))
        )
        field = _location(loc)
        if field not in seen:
            seen[field] = FieldError(field, _message({**item, "loc": loc}))
    return list(seen.values())


def parse_input(data: object) -> ContainerInput:
    """Type-check a raw JSON value; ValidationFailed names every offending field."""
    if not isinstance(data, Mapping):
        raise ValidationFailed([FieldError("body", "the request body must be a JSON object")])
    try:
        return ContainerInput.model_validate(dict(data))
    except ValidationError as e:
        raise ValidationFailed(_field_errors(e)) from e


def _image_error(image: str) -> str | None:
    if not image or any(not (c.isascii() and c.isprintable()) or c.isspace() for c in image):
        return (
            "must be a non-empty image reference of printable ASCII without spaces, e.g. nginx:1.27"
        )
    if "@" in image:
        _, digest = image.split("@", 1)
        if re.fullmatch(r"[a-z0-9]+:[a-f0-9]{32,}", digest) is None:
            return "digest must look like sha256:<hex>, e.g. nginx@sha256:0123…"
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"must include a tag, e.g. {last or 'nginx'}:1.27"
    tag = last.split(":", 1)[1]
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag) is None:
        return "tag must be 1-128 letters, digits, '_', '.' or '-', e.g. nginx:1.27"
    return None


def _quantity_error(value: str) -> str | None:
    try:
        size = parse_quantity(value)
    except ValueError:
        return f"{value!r} is not a Kubernetes quantity; use e.g. 512Mi, 2Gi or 1G"
    if size <= 0:
        return "must be greater than 0, e.g. 512Mi"
    if size > MAX_QUANTITY_BYTES:
        return "must be at most 8Ei (a signed 64-bit number of bytes)"
    return None


def _nul_errors(fields: Mapping[str, Any]) -> list[FieldError]:
    """NUL cannot be passed to a process (argv and environment are C strings): refuse it
    rather than store text the runtime would cut or reject later."""
    errors: list[FieldError] = []
    for field in ("command", "arguments"):
        for index, item in enumerate(fields.get(field) or ()):
            if "\x00" in item:
                errors.append(FieldError(f"{field}[{index}]", "must not contain NUL characters"))
    for key, value in (fields.get("env") or {}).items():
        if "\x00" in value:
            errors.append(FieldError(f"env.{key[:64]}", "must not contain NUL characters"))
    return errors


def _scaling_errors(
    scaling: Mapping[str, int], *, limits: Limits, scale_to_zero: bool
) -> list[FieldError]:
    errors: list[FieldError] = []
    low, high = scaling["minInstances"], scaling["maxInstances"]
    if low < 0:
        errors.append(FieldError("scaling.minInstances", "must be 0 or more"))
    elif low == 0 and not scale_to_zero:
        errors.append(
            FieldError(
                "scaling.minInstances",
                f"0 (scale to zero) is not available: {KNATIVE_REQUIRED}; use 1 or more",
            )
        )
    if high < max(1, low):
        errors.append(
            FieldError(
                "scaling.maxInstances",
                f"must be at least 1 and at least minInstances ({low})",
            )
        )
    elif high > limits.max_instances:
        errors.append(FieldError("scaling.maxInstances", f"must be at most {limits.max_instances}"))
    if not 1 <= scaling["concurrency"] <= MAX_CONCURRENCY:
        errors.append(
            FieldError("scaling.concurrency", f"must be from 1 to {MAX_CONCURRENCY}, e.g. 80")
        )
    if not 0 <= scaling["scaleToZeroAfterSeconds"] <= MAX_SCALE_TO_ZERO_AFTER:
        errors.append(
            FieldError(
                "scaling.scaleToZeroAfterSeconds",
                f"must be from 0 to {MAX_SCALE_TO_ZERO_AFTER} seconds, e.g. 900",
            )
        )
    return errors


def _probe_errors(kind: str, probe: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
    """One probe checked and filled with the defaults (an unset port stays unset: it means the
    container's port)."""
    where = f"probes.{kind}"
    errors: list[FieldError] = []
    actions = [name for name in PROBE_ACTIONS if probe.get(name) is not None]
    for name in PROBE_ACTIONS:
        if name in probe and probe[name] is None:
            errors.append(
                FieldError(f"{where}.{name}", f"must be {_probe_expected(('probes', kind, name))}")
            )
    filled: dict[str, Any] = {**PROBE_DEFAULTS}
    for key in PROBE_DEFAULTS:
        if probe.get(key) is not None:
            filled[key] = probe[key]
    if len(actions) != 1:
        found = f"; got {' and '.join(actions)}" if actions else ""
        errors.append(FieldError(where, f"needs exactly one of httpGet, tcpSocket or exec{found}"))
    for action in actions:
        given = dict(probe[action])
        if action in ("httpGet", "tcpSocket"):
            # Unset: the container's port, whatever it is in later revisions.
            probe_port = given.pop("port", None)
            if isinstance(probe_port, int) and not 1 <= probe_port <= 65535:
                errors.append(
                    FieldError(f"{where}.{action}.port", "must be a port number from 1 to 65535")
                )
            if probe_port is not None:
                given["port"] = probe_port
        if action == "httpGet":
            path = given.get("path")
            path = "/" if path is None else path
            if not path.startswith("/") or any(
                not (c.isascii() and c.isprintable()) or c.isspace() for c in path
            ):
                errors.append(
                    FieldError(
                        f"{where}.httpGet.path",
                        'must start with "/" and hold printable ASCII without spaces, '
                        'e.g. "/ready"',
                    )
                )
            given["path"] = path
        if action == "exec":
            command = given.get("command") or []
            if not command:
                errors.append(
                    FieldError(
                        f"{where}.exec.command",
                        'is required: a non-empty list of strings, e.g. ["cat", "/tmp/ready"]',
                    )
                )
            for index, item in enumerate(command):
                if "\x00" in item:
                    errors.append(
                        FieldError(
                            f"{where}.exec.command[{index}]", "must not contain NUL characters"
                        )
                    )
            given = {"command": list(command)}
        filled[action] = given
    low = {"initialDelaySeconds": 0}
    for key, high in (
        ("initialDelaySeconds", MAX_PROBE_SECONDS),
        ("periodSeconds", MAX_PROBE_SECONDS),
        ("timeoutSeconds", MAX_PROBE_SECONDS),
        ("successThreshold", MAX_PROBE_THRESHOLD),
        ("failureThreshold", MAX_PROBE_THRESHOLD),
    ):
        value = filled[key]
        minimum = low.get(key, 1)
        if not minimum <= value <= high:
            errors.append(FieldError(f"{where}.{key}", f"must be from {minimum} to {high}"))
    if kind != "readiness" and filled["successThreshold"] != 1:
        errors.append(
            FieldError(
                f"{where}.successThreshold",
                f"must be 1 for a {kind} probe (as in Kubernetes)",
            )
        )
    return filled, errors


def startup_budget(probes: Mapping[str, Any]) -> int | None:
    """The start-up budget the probes ask for (JSON names; pure): ``startupBudgetSeconds``, or
    the startup probe's ``initialDelaySeconds + failureThreshold * periodSeconds``."""
    if probes.get("startupBudgetSeconds") is not None:
        return int(probes["startupBudgetSeconds"])
    startup = probes.get("startup")
    if startup:
        return int(
            startup["initialDelaySeconds"] + startup["failureThreshold"] * startup["periodSeconds"]
        )
    return None


def _probes_errors(
    given: Mapping[str, Any], *, gpu: object, limits: Limits
) -> tuple[dict[str, Any], list[FieldError]]:
    """The ``probes`` object checked and filled with Kubernetes' defaults."""
    errors: list[FieldError] = []
    filled: dict[str, Any] = {}
    for kind in PROBE_KINDS:
        probe = given.get(kind)
        if probe is not None:
            filled[kind], found = _probe_errors(kind, probe)
            errors.extend(found)
    budget = given.get("startupBudgetSeconds")
    if budget is not None:
        filled["startupBudgetSeconds"] = budget
        if "startup" in filled:
            errors.append(
                FieldError(
                    "probes.startupBudgetSeconds",
                    "conflicts with probes.startup, whose initialDelaySeconds + "
                    "failureThreshold * periodSeconds is the budget; give only one of them",
                )
            )
    is_gpu = isinstance(gpu, int) and gpu > 0
    ceiling = limits.max_gpu_startup_seconds if is_gpu else limits.max_startup_seconds
    asked = startup_budget(filled) if not errors else budget
    if isinstance(asked, int) and not 1 <= asked <= ceiling:
        field = "probes.startupBudgetSeconds" if budget is not None else "probes.startup"
        what = "GPU revisions" if is_gpu else "revisions without GPUs"
        errors.append(
            FieldError(
                field,
                f"the start-up budget must be from 1 to {ceiling} seconds for {what} "
                f"(asked for {asked})",
            )
        )
    return filled, errors


def _fill_scaling(
    base: Mapping[str, int],
    given: Mapping[str, Any] | None,
    *,
    limits: Limits,
    scale_to_zero: bool,
) -> dict[str, int]:
    """``base`` (empty or the current scaling) with the request's sub-fields merged in.

    Unset fields (and null ones) take the documented defaults, with two adjustments so a body
    without ``scaling`` is always valid: the default maximum never exceeds the operator's limit
    (nor falls below an explicit minimum), and on a runtime that cannot scale to zero an unset
    minimum means 1.
    """
    defaults = {
        **SCALING_DEFAULTS,
        "maxInstances": min(SCALING_DEFAULTS["maxInstances"], limits.max_instances),
    }
    given = dict(given or {})
    reset = {key: defaults[key] for key, value in given.items() if value is None}
    set_here = {key: value for key, value in given.items() if value is not None}
    scaling = {**defaults, **base, **reset, **set_here}
    low = set_here.get("minInstances")
    if "maxInstances" not in base and "maxInstances" not in set_here and isinstance(low, int):
        scaling["maxInstances"] = max(scaling["maxInstances"], low)
    if not scale_to_zero and low is None and scaling["minInstances"] == 0:
        scaling["minInstances"] = 1
    return scaling


def build_spec(
    fields: Mapping[str, Any],
    *,
    limits: Limits,
    catalog: GpuCatalog,
    scale_to_zero: bool = True,
) -> ContainerSpec:
    """Check the invariants of a complete spec (JSON field names) and return it normalised.

    ``scale_to_zero`` says whether the runtime can run a revision at zero instances.
    """
    errors: list[FieldError] = []
    name = fields.get("name")
    image = fields.get("image")
    for required in ("name", "image"):
        if fields.get(required) is None:
            errors.append(FieldError(required, "is required"))
    if isinstance(name, str) and NAME_PATTERN.match(name) is None:
        errors.append(
            FieldError(
                "name",
                "must be a DNS-1123 label: 1-63 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit, e.g. my-service",
            )
        )
    if isinstance(image, str) and (problem := _image_error(image)):
        errors.append(FieldError("image", problem))
    cpu = fields["cpu"]
    if cpu is None or not cpu > 0:
        errors.append(FieldError("cpu", "must be a number greater than 0, e.g. 1 or 0.5"))
    elif cpu > limits.max_cpu:
        errors.append(FieldError("cpu", f"must be at most {limits.max_cpu:g}"))
    for field in ("ram", "ephemeralStorage"):
        value = fields[field]
        if value is None:
            errors.append(FieldError(field, f"must be {_EXPECTED[field]}"))
        elif problem := _quantity_error(value):
            errors.append(FieldError(field, problem))
    gpu = fields["gpu"]
    if gpu is None or gpu < 0:
        errors.append(FieldError("gpu", "must be a whole number of GPUs, 0 or more"))
    elif gpu > limits.max_gpu:
        errors.append(FieldError("gpu", f"must be at most {limits.max_gpu}"))
    port = fields["port"]
    if port is None or not 1 <= port <= 65535:
        errors.append(FieldError("port", 'must be a port number from 1 to 65535, e.g. "8080"'))
    env = fields["env"] or {}
    for key in env:
        if len(key) > MAX_ENV_KEY or ENV_KEY_PATTERN.match(key) is None:
            errors.append(
                FieldError(
                    f"env.{key[:64]}",
                    "variable names must be letters, digits and '_', not starting with a digit",
                )
            )
    errors.extend(_nul_errors(fields))
    if problem := _exec_size_error(env, fields["command"], fields["arguments"]):
        errors.append(FieldError("env", problem))
    desired, gpu_errors = catalog.resolve_all(fields["desiredGPUs"] or [], field="desiredGPUs")
    errors.extend(gpu_errors)
    if desired and isinstance(gpu, int) and gpu < 1:
        errors.append(
            FieldError("desiredGPUs", "needs gpu of 1 or more; set gpu or drop desiredGPUs")
        )
    scaling = {**SCALING_DEFAULTS, **(fields.get("scaling") or {})}
    errors.extend(_scaling_errors(scaling, limits=limits, scale_to_zero=scale_to_zero))
    probes = None
    if fields.get("probes") is not None:
        probes, probe_errors = _probes_errors(fields["probes"], gpu=gpu, limits=limits)
        errors.extend(probe_errors)
    if errors:
        raise ValidationFailed(errors)
    return ContainerSpec(
        name=name,
        image=image,
        cpu=float(cpu),
        ram=fields["ram"],
        gpu=gpu,
        ephemeral_storage=fields["ephemeralStorage"],
        command=fields["command"],
        arguments=fields["arguments"],
        env=dict(env),
        port=port,
        desired_gpus=[model.name for model in desired],
        scaling=ScalingSpec.model_validate(scaling),
        probes=ProbesSpec.model_validate(probes) if probes is not None else None,
    )


def _exec_size_error(
    env: Mapping[str, str], command: list[str] | None, arguments: list[str] | None
) -> str | None:
    """Why a process with this environment and argument list could never be exec'd, if so."""
    size = sum(
        len(key.encode()) + len(value.encode()) + 2 + POINTER_BYTES for key, value in env.items()
    )
    size += sum(
        len(word.encode()) + 1 + POINTER_BYTES for word in [*(command or []), *(arguments or [])]
    )
    if size <= MAX_EXEC_BYTES:
        return None
    return (
        f"with command and arguments takes {size / 1024:.0f} KiB, more than the "
        f"{MAX_EXEC_BYTES // 1024} KiB limit: Linux cannot start a process whose environment "
        "and arguments exceed ARG_MAX (2 MiB with an 8 MiB stack, shared with what the image "
        "adds); pass large data as a file instead"
    )


def spec_for_create(
    data: object, *, limits: Limits, catalog: GpuCatalog, scale_to_zero: bool = True
) -> ContainerSpec:
    """Validate a create request: name and image required, documented defaults for the rest."""
    given = parse_input(data).model_dump(by_alias=True, exclude_unset=True)
    fields = {**DEFAULTS, **given}
    fields["scaling"] = _fill_scaling(
        {}, given.get("scaling"), limits=limits, scale_to_zero=scale_to_zero
    )
    return build_spec(fields, limits=limits, catalog=catalog, scale_to_zero=scale_to_zero)


def spec_for_update(
    current: ContainerSpec,
    data: object,
    *,
    limits: Limits,
    catalog: GpuCatalog,
    scale_to_zero: bool = True,
) -> ContainerSpec:
    """Validate a partial update: present fields replace the current ones (env and probes as a
    whole, ``"probes": null`` removes them); ``scaling`` sub-fields merge into the current
    scaling (``"scaling": null`` resets it)."""
    given = parse_input(data).model_dump(by_alias=True, exclude_unset=True)
    fields = {**current.to_json(), **given}
    # A spec stored before scaling existed (or reset with null) starts from the defaults, so
    # the operator's current DOCKYARD_MAX_INSTANCES caps its maximum.
    reset = "scaling" in given and given["scaling"] is None
    stored = "scaling" in current.model_fields_set
    base = current.scaling.to_json() if stored and not reset else {}
    fields["scaling"] = _fill_scaling(
        base, given.get("scaling"), limits=limits, scale_to_zero=scale_to_zero
    )
    return build_spec(fields, limits=limits, catalog=catalog, scale_to_zero=scale_to_zero)


def fit_to_runtime(spec: ContainerSpec, *, scale_to_zero: bool) -> ContainerSpec:
    """A stored spec (e.g. a rollback's) made runnable here: without scale to zero, min 0 is 1."""
    if scale_to_zero or spec.scaling.min_instances > 0:
        return spec
    scaling = spec.scaling.model_copy(update={"min_instances": 1})
    return spec.model_copy(update={"scaling": scaling})
