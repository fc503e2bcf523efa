"""The client commands of ``dockyard`` (click + rich); ``app.cli`` dispatches to :data:`client`."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.client import config as client_config
from app.client.api import Api, ApiError, Container

TERMINAL = ("deployed", "failed")


def _console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 1000  # piped: never cut or wrap table cells (ids, URLs)
    return console


def _out() -> Console:
    return _console()


def _err() -> Console:
    return _console(stderr=True)


def _api() -> Api:
    return Api(client_config.load())


def _fail(message: str, code: int = 1) -> NoReturn:
    _err().print(f"[red]error:[/red] {escape(message)}")
    sys.exit(code)


def _url(container: Container) -> str:
    urls = container.get("urls") or []
    return f"http://{urls[0]}/" if urls else ""


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.group(
    name="dockyard",
    help="Client commands of Dockyard; they speak the server's REST API "
    "(DOCKYARD_URL / DOCKYARD_TOKEN, or the file written by `dockyard login`).",
)
def client() -> None:
    pass


# -- login -----------------------------------------------------------------------------------------


@client.command()
@click.option("--url", prompt="Dockyard URL", default=client_config.DEFAULT_URL, show_default=True)
@click.option(
    "--token",
    prompt="Token",
    hide_input=True,
    help="A bearer token (on the server's machine: `dockyard token --sub <you>`).",
)
def login(url: str, token: str) -> None:
    """Check the URL and token against the server and store them (mode 0600)."""
    cfg = client_config.ClientConfig(url=url.rstrip("/"), token=token.strip(), source="login")
    with Api(cfg) as api:
        try:
            api.request("GET", "/v1/containers", params={"rowsPerPage": 1})
        except ApiError as e:
            _fail(f"login refused: {e}")
    path = client_config.save(url, token.strip())
    _out().print(f"logged in to {escape(url)}; saved to {escape(str(path))} (mode 0600)")


# -- deploy and waiting ----------------------------------------------------------------------------


def _spec_from(file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            _fail(f"cannot read the spec file {file}: {e}", 2)
        if not isinstance(loaded, dict):
            _fail(f"{file}: a spec file holds one object (name, image, port…)", 2)
        spec.update(loaded)
    spec.update({key: value for key, value in flags.items() if value is not None})
    return spec


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str] | None:
    if not pairs:
        return None
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--env {pair!r}: use KEY=VALUE", 2)
        env[key] = value
    return env


PhaseShow = Callable[[dict[str, Any], dict[str, Any] | None], None]
"""Called with a phase newly reached and the phase before it (whose ``durationMs`` is the time
it took to get here), or None for the first one."""


def _read_events(
    watcher: Api, container_id: str, items: queue.Queue[Any], stop: threading.Event
) -> None:
    """The status events, into ``items`` (None when the container was deleted, or the error).

    Only this thread touches ``watcher``, and closes it: closing a connection from another
    thread while this one reads it would free its file descriptor for reuse by the next
    connection, which this read could then steal bytes from. After ``stop`` the thread ends at
    the next status event, or when the server ends the stream (a daemon: it never delays an
    exit)."""
    events = watcher.status_events(container_id)
    try:
        for event in events:
            if stop.is_set():
                return
            items.put(event)
        items.put(None)
    except Exception as e:  # handed over to the waiting thread, which raises it
        if not stop.is_set():
            items.put(e)
    finally:
        events.close()
        watcher.close()


def wait_for(
    api: Api,
    container: Container,
    *,
    timeout: float,
    show: Callable[[Container], None],
    show_phase: PhaseShow | None = None,
) -> Container:
    """Follow the container's status events until its newest revision is deployed or failed;
    ``show`` is called on every change of status, reason or revision, ``show_phase`` on each
    deploy phase of that revision as it is reached. The events are read by a thread of their
    own (with its own connection), so the timeout holds even while the server is silent."""
    revision = container["revision"]
    last: tuple[Any, ...] | None = None
    shown: set[str] = set()
    deadline = time.monotonic() + timeout
    items: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    watcher = Api(api.config)
    reader = threading.Thread(
        target=_read_events,
        args=(watcher, container["id"], items, stop),
        name="dockyard-status-events",
        daemon=True,
    )
    reader.start()
    try:
        while True:
            key = (container["status"], container.get("statusReason"), container.get("revision"))
            if key != last:
                show(container)
                last = key
            phases = container.get("phases") or []
            if show_phase is not None and container.get("revision") == revision:
                for index, phase in enumerate(phases):
                    if phase["phase"] not in shown:
                        shown.add(phase["phase"])
                        show_phase(phase, phases[index - 1] if index else None)
            done = container["status"] in TERMINAL and (
                container["status"] == "failed" or container.get("readyRevision") == revision
            )
            if done or container.get("revision") != revision:
                return container
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                item = items.get(timeout=remaining)
            except queue.Empty:
                raise ApiError(
                    f"timed out after {timeout:g}s; last status {container['status']}: "
                    f"{container.get('statusReason') or ''}"
                ) from None
            if item is None:
                raise ApiError(f"{container['name']} was deleted while deploying")
            if isinstance(item, Exception):
                raise item
            container = item
    finally:
        stop.set()


def _duration(ms: float | None) -> str:
    if ms is None:
        return "?"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _phase_line(phase: dict[str, Any], before: dict[str, Any] | None) -> str:
    """``scheduled +41 ms``: the phase, and how long it took to get there from the one before."""
    text = str(phase["phase"])
    if before is not None:
        text += f" +{_duration(before.get('durationMs'))}"
    if phase.get("reason"):
        text += f"  {phase['reason']}"
    return text


def phase_summary(container: Container) -> str | None:
    """One line: accepted -> the last phase in total, and how long each phase lasted."""
    phases = container.get("phases") or []
    if len(phases) < 2:
        return None
    lasted = [p for p in phases if p.get("durationMs") is not None]
    total = sum(float(p["durationMs"]) for p in lasted)
    each = ", ".join(f"{p['phase']} {_duration(p['durationMs'])}" for p in lasted)
    return (
        f"revision {container['revision']}: {phases[0]['phase']} -> {phases[-1]['phase']} "
        f"in {_duration(total)} ({each})"
    )


def _phase_text(container: Container) -> str:
    reason = container.get("statusReason") or ""
    return f"{container['status']}" + (f"  {reason}" if reason else "")


def watch_and_report(api: Api, container: Container, *, timeout: float, as_json: bool) -> None:
    """Live progress until deployed or failed: a spinner in a terminal, one line per change and
    per deploy phase otherwise, then a summary of the phases; nothing but the final JSON (the
    container with its newest revision's ``phases``) with ``--json``. Exits 1 with the reason on
    failure."""
    out = _out()
    if as_json:
        final = wait_for(api, container, timeout=timeout, show=lambda _c: None)
    elif out.is_terminal:
        with out.status(f"revision {container['revision']}: deploying…") as status:

            def show(c: Container) -> None:
                status.update(f"revision {c['revision']}: {escape(_phase_text(c))}")
                out.print(f"  {escape(_phase_text(c))}")

            def show_phase(phase: dict[str, Any], before: dict[str, Any] | None) -> None:
                status.update(f"revision {container['revision']}: {escape(phase['phase'])}…")
                out.print(f"  [dim]phase[/dim] {escape(_phase_line(phase, before))}")

            final = wait_for(api, container, timeout=timeout, show=show, show_phase=show_phase)
    else:
        final = wait_for(
            api,
            container,
            timeout=timeout,
            show=lambda c: click.echo(f"revision {c['revision']}: {_phase_text(c)}"),
            show_phase=lambda phase, before: click.echo(
                f"revision {container['revision']}: phase {_phase_line(phase, before)}"
            ),
        )
    if as_json:
        _print_json(final)
    summary = phase_summary(final) if final.get("revision") == container["revision"] else None
    if summary is not None and not as_json:
        out.print(escape(summary))
    if final["status"] != "deployed":
        _fail(
            f"{final['name']} revision {container['revision']} {final['status']}: "
            f"{final.get('statusReason') or 'no reason given'}"
        )
    if not as_json:
        out.print(f"[green]deployed[/green] {escape(final['name'])} at {escape(_url(final))}")


def _deployed(api: Api, container: Container, *, wait: bool, timeout: float, as_json: bool) -> None:
    if wait:
        watch_and_report(api, container, timeout=timeout, as_json=as_json)
    elif as_json:
        _print_json(container)
    else:
        _out().print(
            f"{escape(container['name'])} revision {container['revision']}: "
            f"{container['status']} ({escape(_url(container))})"
        )


_wait_option = click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until deployed or failed."
)
_timeout_option = click.option(
    "--timeout", default=600.0, show_default=True, help="Seconds to wait at most."
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")


@client.command()
@click.argument("file", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Container name (creates it, or updates the one of that name).")
@click.option("--image", help="Image with a tag, e.g. nginx:1.27.")
@click.option("--port", help="The port the process listens on.")
@click.option("--cpu", type=float)
@click.option("--ram", help="e.g. 512Mi")
@click.option("--gpu", type=int)
@click.option("--ephemeral-storage", "ephemeral_storage", help="e.g. 10Gi")
@click.option("--env", "env", multiple=True, help="KEY=VALUE, repeatable (replaces env).")
@click.option("--command", "command", multiple=True, help="Entrypoint words, repeatable.")
@click.option("--arg", "arguments", multiple=True, help="Arguments, repeatable.")
@_wait_option
@_timeout_option
@_json_option
def deploy(
    file: Path | None,
    name: str | None,
    image: str | None,
    port: str | None,
    cpu: float | None,
    ram: str | None,
    gpu: int | None,
    ephemeral_storage: str | None,
    env: tuple[str, ...],
    command: tuple[str, ...],
    arguments: tuple[str, ...],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Create or update (by name) a container from FILE (YAML or JSON) and/or flags, then wait
    until it is deployed and print its URL."""
    spec = _spec_from(
        file,
        {
            "name": name,
            "image": image,
            "port": port,
            "cpu": cpu,
            "ram": ram,
            "gpu": gpu,
            "ephemeralStorage": ephemeral_storage,
            "env": _parse_env(env),
            "command": list(command) or None,
            "arguments": list(arguments) or None,
        },
    )
    if not spec.get("name"):
        _fail("a name is needed: --name or `name:` in the spec file", 2)
    with _api() as api:
        try:
            existing = api.find_by_name(str(spec["name"]))
            if existing is None:
                container = api.create(spec)
                action = "created"
            else:
                container = api.update(existing["id"], spec)
                action = "updated"
            if not as_json:
                _err().print(
                    f"{action} {escape(container['name'])} ({container['id']}), "
                    f"revision {container['revision']}"
                )
            _deployed(api, container, wait=wait, timeout=timeout, as_json=as_json)
        except ApiError as e:
            _fail(str(e))


@client.command()
@click.argument("container")
@_wait_option
@_timeout_option
@_json_option
def redeploy(container: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Run the current spec again as a new revision (e.g. after an image pull failed)."""
    with _api() as api:
        try:
            found = api.find(container)
            _deployed(api, api.redeploy(found["id"]), wait=wait, timeout=timeout, as_json=as_json)
        except ApiError as e:
            _fail(str(e))


@client.command()
@click.argument("container")
@click.argument("revision", type=int)
@_wait_option
@_timeout_option
@_json_option
def rollback(container: str, revision: int, wait: bool, timeout: float, as_json: bool) -> None:
    """Make REVISION's spec the newest revision again, and wait for it."""
    with _api() as api:
        try:
            found = api.find(container)
            result = api.rollback(found["id"], revision)
            _deployed(api, result, wait=wait, timeout=timeout, as_json=as_json)
        except ApiError as e:
            _fail(str(e))


# -- reading ---------------------------------------------------------------------------------------


@client.command(name="ls")
@click.option("--all", "all_users", is_flag=True, help="Every user's containers (ADMIN).")
@_json_option
def list_(all_users: bool, as_json: bool) -> None:
    """Your containers, newest first."""
    with _api() as api:
        try:
            items = api.list_containers(all_users=all_users)
        except ApiError as e:
            _fail(str(e))
    if as_json:
        _print_json(items)
        return
    table = Table("NAME", "STATUS", "REV", "READY", "URL", "ID", box=None)
    for c in items:
        table.add_row(
            escape(c["name"]),
            c["status"],
            str(c["revision"]),
            str(c.get("readyRevision") or "-"),
            escape(_url(c)),
            c["id"],
        )
    _out().print(table)


@client.command()
@click.argument("container")
@_json_option
def status(container: str, as_json: bool) -> None:
    """A container's status, reason, revision and URL."""
    with _api() as api:
        try:
            found = api.find(container)
        except ApiError as e:
            _fail(str(e))
    if as_json:
        _print_json(found)
        return
    table = Table(show_header=False, box=None)
    for label, value in (
        ("name", found["name"]),
        ("id", found["id"]),
        ("status", found["status"]),
        ("reason", found.get("statusReason") or ""),
        ("revision", str(found["revision"])),
        ("ready revision", str(found.get("readyRevision") or "-")),
        ("image", found["image"]),
        ("port", str(found["port"])),
        ("url", _url(found)),
        ("updated", found["dateUpdated"]),
    ):
        table.add_row(label, escape(value))
    _out().print(table)
    if found["status"] == "failed":
        sys.exit(1)


@client.command()
@click.argument("container")
@_json_option
def revisions(container: str, as_json: bool) -> None:
    """A container's revisions, newest first."""
    with _api() as api:
        try:
            found = api.find(container)
            items = api.revisions(found["id"])
        except ApiError as e:
            _fail(str(e))
    if as_json:
        _print_json(items)
        return
    table = Table("REV", "IMAGE", "CREATED", "BY", "SERVING", box=None)
    for r in items:
        serving = "*" if r["revisionNumber"] == found.get("readyRevision") else ""
        table.add_row(
            str(r["revisionNumber"]),
            escape(r["image"]),
            r["dateCreated"],
            escape(r["createdBy"]),
            serving,
        )
    _out().print(table)


@client.command(name="rm")
@click.argument("container")
def remove(container: str) -> None:
    """Delete a container and all its revisions."""
    with _api() as api:
        try:
            found = api.find(container)
            api.delete(found["id"])
        except ApiError as e:
            _fail(str(e))
    _out().print(f"removed {escape(found['name'])} ({found['id']})")


@client.command()
@click.argument("container")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming (reconnects by itself).")
@click.option("--tail", type=int, default=100, show_default=True, help="Lines of backlog.")
@click.option("--since", help="RFC 3339 time or seconds ago.")
@_json_option
def logs(container: str, follow: bool, tail: int, since: str | None, as_json: bool) -> None:
    """A container's output; with -f it follows across revisions and resumes after a dropped
    connection where it stopped (Last-Event-ID)."""
    with _api() as api:
        try:
            found = api.find(container)
            for event in api.logs(found["id"], follow=follow, tail=tail, since=since):
                if as_json:
                    click.echo(
                        json.dumps(
                            {
                                "id": event.id,
                                "timestamp": event.timestamp,
                                "line": event.line,
                                "stream": event.stream,
                                "revision": event.revision,
                            }
                        )
                    )
                else:
                    prefix = f"r{event.revision} " if event.revision is not None else ""
                    click.echo(f"{prefix}{event.line}", err=event.stream == "stderr", nl=True)
        except ApiError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            pass
