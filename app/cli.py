"""The ``dockyard`` command: serve, mint tokens, migrate, export the OpenAPI document (here, with
argparse), and the client commands that talk to a server's API (``app.client.cli``, click)."""

from __future__ import annotations

import argparse
import sys

from app.settings import Settings


def _settings_help() -> str:
    lines = ["environment (prefix DOCKYARD_):"]
    for name, info in Settings.model_fields.items():
        lines.append(f"  DOCKYARD_{name.upper():28} {info.description or ''}")
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
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    token = commands.add_parser("token", help="mint a token with the local signing key")
    token.add_argument("--sub", required=True, help="the token subject (user id)")
    token.add_argument("--role", action="append", default=[], help="a role, e.g. ADMIN")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    commands.add_parser("migrate", help="bring the database schema up to date")
    openapi = commands.add_parser("openapi", help="print the REST OpenAPI document")
    openapi.add_argument("--output", "-o", help="write it to this file instead")
    return parser


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
        import logging

        import uvicorn

        from app.httpserver import http_protocol
        from app.observability.logs import log_config
        from app.server import create_app

        # Dockyard's own messages (which engine and socket it chose, reconciler warnings) beside
        # uvicorn's; uvicorn configures only its own loggers.
        logging.basicConfig(
            level=args.log_level.upper(), format="%(levelname)-9s %(name)s: %(message)s"
        )

        uvicorn.run(
            create_app(settings, port=args.port),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=log_config(args.log_level, settings.log_format),
            # The built-in ingress appends the real peer to X-Forwarded-For itself; letting
            # uvicorn rewrite the peer from that header first would record the client twice.
            proxy_headers=False,
            # Connections whose request headers never finish are closed (uvicorn alone keeps
            # them open for ever).
            http=http_protocol(settings.header_timeout_seconds),
        )
        return 0
    if args.command == "token":
        from app.auth import LocalKeys

        if settings.auth_issuer:
            print(
                "dockyard token: DOCKYARD_AUTH_ISSUER is set; get tokens from that issuer",
                file=sys.stderr,
            )
            return 2
        if args.ttl <= 0:
            print("dockyard token: --ttl must be a positive number of seconds", file=sys.stderr)
            return 2
        keys = LocalKeys(settings)
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
        from pathlib import Path

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
