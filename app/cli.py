"""The ``dockyard`` command: serve, mint tokens, migrate, export the OpenAPI document."""

from __future__ import annotations

import argparse
import sys

from app.settings import Settings


def _settings_help() -> str:
    lines = ["environment (prefix DOCKYARD_):"]
    for name, info in Settings.model_fields.items():
        lines.append(f"  DOCKYARD_{name.upper():28} {info.description or ''}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockyard", description="Serverless containers.")
    commands = parser.add_subparsers(dest="command", required=True)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        import uvicorn

        from app.server import create_app, serve_address

        # Caddy (the data plane) owns the public port and routes container hosts to revisions;
        # every other host reaches the API, which listens on a private unix socket behind it.
        serve = serve_address(settings, args.host, args.port)
        uvicorn.run(
            create_app(settings, port=args.port, serve=serve),
            uds=str(serve.api_socket),
            log_level=args.log_level,
            # Only Caddy can reach the socket (a 0700 directory): take the client from its
            # X-Forwarded-For.
            proxy_headers=True,
            forwarded_allow_ips="*",
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
