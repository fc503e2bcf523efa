"""The ``dockyard`` command: serve, mint tokens, migrate, export the OpenAPI document (here, with
argparse), and the client commands that talk to a server's API (``app.client.cli``, click)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.settings import Settings


def _default_text(name: str) -> str:
    info = Settings.model_fields[name]
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        if name in ("cors_origins", "auth_algorithms"):
            return ",".join(str(item) for item in value) or "none"
        return json.dumps(value) if value else "none"
    return str(value)


def _settings_help() -> str:
    lines = ["environment (prefix DOCKYARD_):"]
    for name, info in Settings.model_fields.items():
        lines.append(
            f"  DOCKYARD_{name.upper():28} {info.description or ''} "
            f"[default: {_default_text(name)}]"
        )
    return "\n".join(lines)


CLIENT_COMMANDS = {
    "login": "store the server URL and a token for the client commands",
    "deploy": "create or update a container by name and wait until it is deployed",
    "ls": "list your containers",
    "status": "show a container's status",
    "revisions": "list a container's revisions",
    "rollback": "roll a container back to a revision",
    "redeploy": "run a container's current spec again as a new revision",
    "rm": "delete a container",
    "logs": "show (-f: follow) a container's output",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dockyard",
        description="Serverless containers. Client commands: `dockyard <command> --help`.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in CLIENT_COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)  # handled by app.client.cli
    serve = commands.add_parser(
        "serve",
        help="run the API server",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on [default: %(default)s]"
    )
    serve.add_argument("--port", type=int, default=8000, help="port [default: %(default)s]")
    serve.add_argument(
        "--log-level", default="info", help="debug, info, warning… [default: %(default)s]"
    )
    token = commands.add_parser(
        "token",
        help="mint a token with the local signing key",
        description="Mint a token signed with the key in DOCKYARD_DATA_DIR (else the nearest "
        ".dockyard directory with a key, here or above; else ./.dockyard, creating a key with "
        "a warning). Tokens last --ttl seconds (default 3600); servers accept them for "
        "DOCKYARD_AUTH_LEEWAY_SECONDS (default 30) past their expiry, for clock skew.",
    )
    token.add_argument("--sub", required=True, help="the token subject (user id)")
    token.add_argument("--role", action="append", default=[], help="a role, e.g. ADMIN")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    commands.add_parser("migrate", help="bring the database schema up to date")
    openapi = commands.add_parser("openapi", help="print the REST OpenAPI document")
    openapi.add_argument("--output", "-o", help="write it to this file instead")
    return parser


def _token_settings(settings: Settings) -> Settings:
    """The settings whose data dir holds the key to sign with: DOCKYARD_DATA_DIR when set, else
    the nearest ``.dockyard`` with a key in this directory or a parent (as ``git`` finds its
    repository), else ``./.dockyard``."""
    import os

    from app.auth import KEY_FILE

    default = Settings.model_fields["data_dir"].default
    if os.environ.get("DOCKYARD_DATA_DIR") or settings.data_dir != default:
        return settings
    here = Path.cwd()
    for directory in (here, *here.parents):
        if (directory / default / KEY_FILE).is_file():
            return settings.model_copy(update={"data_dir": directory / default})
    return settings


def _client(argv: list[str]) -> int:
    from app.client.cli import client

    try:
        client.main(args=argv, prog_name="dockyard", standalone_mode=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CLIENT_COMMANDS:
        return _client(argv)
    args = _parser().parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        import uvicorn

        from app.httpserver import http_protocol
        from app.observability.logs import log_config
        from app.server import create_app, serve_address

        # Caddy (the data plane) owns the public port and routes container hosts to revisions;
        # every other host reaches the API, which listens on a private unix socket behind it.
        serve = serve_address(settings, args.host, args.port)
        uvicorn.run(
            create_app(settings, port=args.port, serve=serve),
            uds=str(serve.api_socket),
            log_level=args.log_level,
            log_config=log_config(args.log_level, settings.log_format),
            # Only Caddy can reach the socket (a 0700 directory): take the client from its
            # X-Forwarded-For.
            proxy_headers=True,
            forwarded_allow_ips="*",
            # Connections whose request headers never finish are closed (uvicorn alone keeps
            # them open for ever; Caddy in front has its own read_header_timeout).
            http=http_protocol(settings.header_timeout_seconds),
        )
        return 0
    if args.command == "token":
        from app.auth import KEY_FILE, LocalKeys

        if settings.auth_issuer:
            print(
                "dockyard token: DOCKYARD_AUTH_ISSUER is set; get tokens from that issuer",
                file=sys.stderr,
            )
            return 2
        if args.ttl <= 0:
            print("dockyard token: --ttl must be a positive number of seconds", file=sys.stderr)
            return 2
        settings = _token_settings(settings)
        key_file = (settings.data_dir / KEY_FILE).resolve()
        existed = key_file.exists()
        keys = LocalKeys(settings)
        if existed:
            print(f"dockyard token: signed with {key_file}", file=sys.stderr)
        else:
            print(
                f"dockyard token: warning: created a NEW signing key {key_file}; a server using "
                "another data directory refuses this token (401 'No key for kid'): set "
                "DOCKYARD_DATA_DIR to the server's data directory",
                file=sys.stderr,
            )
        print(keys.mint(subject=args.sub, roles=args.role, ttl_seconds=args.ttl))
        return 0
    if args.command == "migrate":
        from app.db import make_engine, migrate

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.effective_database_url)
        migrate(engine)
        engine.dispose()
        print("database is up to date")
        return 0
    if args.command == "openapi":
        from app.server import openapi_json

        document = openapi_json()
        if args.output:
            Path(args.output).write_text(document, encoding="utf-8")
        else:
            sys.stdout.write(document)
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
