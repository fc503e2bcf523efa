"""API speed: Dockyard's request path against a bare FastAPI app, at 10 and 100k containers.

For SQLite and PostgreSQL in turn, starts ``dockyard serve`` (runtime ``none``, default log
level, as a new user runs it) and measures with ``wrk`` (installed from Debian if missing).
``dockyard serve``'s port is Caddy (the data plane), which proxies API requests to uvicorn on a
unix socket; the bare reference app is uvicorn alone. So the request path is measured twice, like
with like, and every line says which path it measured:

- ``direct``: the same API application with the same uvicorn options on a TCP port
  (bench/direct_app.py, on the same database) against the bare FastAPI/uvicorn app answering the
  same bytes (bench/bare_app.py, access log off: the strict reference);
- ``via Caddy``: ``dockyard serve``'s own port against the bare app behind a plain Caddy reverse
  proxy (the same Caddy binary);

- ``GET /v1/containers`` (10 rows) at 32 connections, both paths;
- the same list as a GraphQL query: p50 at c=1 and req/s at c=32, each against REST (direct);
- 100k containers (90k one owner's) bulk-inserted into the server's database: p50 at c=1 of the
  own first and last page, ADMIN ``all=true`` first and last page (``page``), the same deep pages
  walked with the keyset cursor (``after``), ``GET /v1/containers/{id}``, its revisions and the
  GraphQL ``container`` query;
- the server's RSS when idle and after listing all 100k rows (100 per page, by cursor).

Not run by CI. PostgreSQL: ``DOCKYARD_BENCH_POSTGRES_URL`` (an empty database: the bench fills
it and never empties it) or one started with scripts/start-postgres.sh in a temporary directory
and removed afterwards. Run as root:

    PYTHONPATH=. .venv/bin/python bench/api.py [--seconds 3] [--only sqlite|postgres] [--quick]

``--quick`` stops after the 10-container measurements (no 100k seed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.auth import LocalKeys  # noqa: E402
from app.dataplane.supervisor import caddy_binary  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench._harness import ensure_wrk, free_port  # noqa: E402

BIG_OWNER = "big"
SMALL_OWNER = "small"
SEED_TOTAL = 100_000
SEED_BIG = 90_000
CONTAINER_FIELDS = (
    "id name createdBy image cpu ram gpu ephemeralStorage command arguments env port "
    "dateCreated dateUpdated status statusReason urls desiredGPUs revision readyRevision"
)
GQL_LIST = "{ containers { total page rowsPerPage items { " + CONTAINER_FIELDS + " } } }"
GQL_ONE = 'query { container(id: "ID") { ' + CONTAINER_FIELDS + " } }"


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never answered")
        time.sleep(0.1)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LAST_CPU_MS: list[float] = [0.0]
"""Server CPU milliseconds per request of the last wrk run given a pid: unlike req/s and
latency, it hardly moves when other processes load the machine."""


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    token: str | None = None,
    body: str | None = None,
    work: Path,
    pid: int | None = None,
) -> tuple[float, float]:
    """Run wrk; returns (requests per second, p50 latency in ms). Fails on any non-2xx."""
    threads = 1 if connections == 1 else 2
    script = work / "wrk.lua"
    lines = ["wrk.headers['Content-Type'] = 'application/json'"]
    if token:
        lines.append(f"wrk.headers['Authorization'] = 'Bearer {token}'")
    if body is not None:
        lines += ["wrk.method = 'POST'", f"wrk.body = {json.dumps(body)}"]
    lines.append(
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('NON2XX %d\\n', summary.errors.status))\nend"
    )
    script.write_text("\n".join(lines) + "\n")
    cpu_before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if pid:
        done = re.search(r"(\d+) requests in", out)
        assert done is not None, out
        LAST_CPU_MS[0] = (cpu_seconds(pid) - cpu_before) * 1000 / max(1, int(done.group(1)))
    bad = re.search(r"NON2XX (\d+)", out)
    if bad and int(bad.group(1)):
        raise RuntimeError(f"{url}: {bad.group(1)} non-2xx answers\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert p50 is not None, out
    return rps, float(p50.group(1)) * _UNITS[p50.group(2)]


class Server:
    def __init__(self, work: Path, database_url: str | None) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DOCKYARD_DATA_DIR": str(work), "DOCKYARD_RUNTIME": "none"}
        if database_url:
            env["DOCKYARD_DATABASE_URL"] = database_url
        self.log = (work / "server.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_up(self.url + "/healthz")
        keys = LocalKeys(Settings(data_dir=work))
        self.tokens = {
            who: keys.mint(subject=who, roles=roles, ttl_seconds=3600)
            for who, roles in [(SMALL_OWNER, []), (BIG_OWNER, []), ("root", ["ADMIN"])]
        }
        self.database_url = database_url or f"sqlite:///{work / 'dockyard.db'}"

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            timeout=60,
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def start_direct(work: Path, database_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    """The API as ``dockyard serve`` runs it, on a TCP port without Caddy (bench/direct_app.py)."""
    port = free_port()
    env = {**os.environ, "DOCKYARD_DATA_DIR": str(work), "DOCKYARD_RUNTIME": "none"}
    if database_url:
        env["DOCKYARD_DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.direct_app", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=(work / "direct.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/healthz")
    return proc, url


def start_caddy_proxy(work: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], str]:
    """A plain Caddy reverse proxy (no admin endpoint, plain HTTP) in front of the bare app."""
    port = free_port()
    config = {
        "admin": {"disabled": True},
        "apps": {
            "http": {
                "servers": {
                    "bench": {
                        "listen": [f"127.0.0.1:{port}"],
                        "automatic_https": {"disable": True},
                        "routes": [
                            {
                                "handle": [
                                    {
                                        "handler": "reverse_proxy",
                                        "upstreams": [{"dial": f"127.0.0.1:{upstream_port}"}],
                                    }
                                ]
                            }
                        ],
                    }
                }
            }
        },
    }
    (work / "bare-caddy.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [caddy_binary(), "run", "--config", str(work / "bare-caddy.json")],
        cwd=work,
        env={**os.environ, "HOME": str(work), "XDG_DATA_HOME": str(work)},
        stdout=(work / "bare-caddy.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url + "/v1/containers")
    return proc, url


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)


def seed(database_url: str, spec: dict[str, Any]) -> None:
    """Bulk-insert 100k containers (90k of BIG_OWNER) with one revision each."""
    engine = sa.create_engine(database_url)
    meta = sa.MetaData()
    containers = sa.Table("containers", meta, autoload_with=engine)
    revisions = sa.Table("revisions", meta, autoload_with=engine)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    batch = 10_000
    for first in range(0, SEED_TOTAL, batch):
        rows, revs = [], []
        for n in range(first, first + batch):
            owner = BIG_OWNER if n % 10 else f"user{n % 1000}"
            name = f"seed-{n}"
            moment = start + timedelta(seconds=n)
            cid = str(uuid.UUID(int=n + 1))
            row_spec = {**spec, "name": name}
            rows.append(
                {
                    "id": cid,
                    "name": name,
                    "created_by": owner,
                    "slug": f"{n:026d}",
                    "spec": row_spec,
                    "status": "deployed",
                    "status_reason": "",
                    "status_message": "",
                    "generation": 1,
                    "observed_generation": 1,
                    "ready_revision": 1,
                    "date_created": moment,
                    "date_updated": moment,
                }
            )
            revs.append(
                {
                    "container_id": cid,
                    "revision_number": 1,
                    "image": spec["image"],
                    "spec": row_spec,
                    "created_by": owner,
                    "date_created": moment,
                    "instances_desired": 1,
                    "instances_ready": 1,
                    "endpoints": [],
                    "serving_state": "serving",
                    "state_reason": "",
                    "state_message": "",
                }
            )
        with engine.begin() as connection:
            connection.execute(containers.insert(), rows)
            connection.execute(revisions.insert(), revs)
    # What autovacuum does after a bulk load (and SQLite's ANALYZE): statistics, and on PostgreSQL
    # the visibility map that lets counts and pages be index-only scans.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("VACUUM ANALYZE containers"))
            connection.execute(sa.text("VACUUM ANALYZE revisions"))
        else:
            connection.execute(sa.text("ANALYZE"))
    engine.dispose()


def bench_database(
    label: str, database_url: str | None, seconds: int, *, quick: bool = False
) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def out(what: str, value: str) -> None:
        rows.append((f"{label}: {what}", value))
        print(f"  {what:58} {value}", flush=True)

    print(f"== {label}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-api-") as tmp:
        work = Path(tmp)
        server = Server(work, database_url)
        bare_proc = direct_proc = caddy_proc = None
        try:
            with server.client(SMALL_OWNER) as api:
                for n in range(10):
                    api.post(
                        "/v1/containers",
                        json={"name": f"small-{n}", "image": "nginx:1.27", "port": "80"},
                    ).raise_for_status()
                body = api.get("/v1/containers").content
                first_id = api.get("/v1/containers").json()["items"][0]["id"]
                spec = dict(
                    api.get(f"/v1/containers/{first_id}/revisions").json()["items"][0]["spec"]
                )
            out("dockyard serve: RSS idle (10 containers)", f"{rss_mib(server.proc.pid):.0f} MiB")
            (work / "body.json").write_bytes(body)
            bare_port = free_port()
            bare_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.bare_app:app",
                    "--port",
                    str(bare_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                env={**os.environ, "BENCH_BARE_BODY": str(work / "body.json")},
                cwd=ROOT,
            )
            bare_url = f"http://127.0.0.1:{bare_port}"
            wait_up(bare_url + "/v1/containers")
            caddy_proc, bare_caddy_url = start_caddy_proxy(work, bare_port)
            direct_proc, direct_url = start_direct(work, database_url)
            token = server.tokens[SMALL_OWNER]
            common: dict[str, Any] = {"seconds": seconds, "work": work}
            rest_url = direct_url + "/v1/containers"
            gql_url = direct_url + "/graphql"
            wrk(rest_url, connections=32, token=token, **common)  # warm up
            bare_rps, _ = wrk(
                bare_url + "/v1/containers", connections=32, pid=bare_proc.pid, **common
            )
            bare_cpu = LAST_CPU_MS[0]
            mine = {**common, "pid": direct_proc.pid}
            rest_rps, _ = wrk(rest_url, connections=32, token=token, **mine)
            rest_cpu = LAST_CPU_MS[0]
            out(
                "direct: REST list c=32 req/s vs bare",
                f"{rest_rps:.0f} vs {bare_rps:.0f} = {rest_rps / bare_rps:.3f}x (goal >= 0.3)",
            )
            out(
                "  direct: server CPU per request, REST vs bare",
                f"{rest_cpu:.2f} vs {bare_cpu:.2f} ms = {bare_cpu / rest_cpu:.3f}x",
            )
            wrk(server.url + "/v1/containers", connections=32, token=token, **common)  # warm up
            caddy_bare_rps, _ = wrk(bare_caddy_url + "/v1/containers", connections=32, **common)
            caddy_rest_rps, _ = wrk(
                server.url + "/v1/containers", connections=32, token=token, **common
            )
            out(
                "via Caddy: REST list c=32 req/s vs bare behind Caddy",
                f"{caddy_rest_rps:.0f} vs {caddy_bare_rps:.0f} = "
                f"{caddy_rest_rps / caddy_bare_rps:.3f}x",
            )
            gql_body = json.dumps({"query": GQL_LIST})
            _, rest_p50 = wrk(rest_url, connections=1, token=token, **mine)
            rest1_cpu = LAST_CPU_MS[0]
            _, gql_p50 = wrk(gql_url, connections=1, token=token, body=gql_body, **mine)
            gql1_cpu = LAST_CPU_MS[0]
            out(
                "direct: GraphQL list c=1 p50 vs REST",
                f"{gql_p50:.2f} vs {rest_p50:.2f} ms = {gql_p50 / rest_p50:.2f}x (goal <= 1.5)",
            )
            out(
                "  direct: server CPU per request, GraphQL vs REST",
                f"{gql1_cpu:.2f} vs {rest1_cpu:.2f} ms = {gql1_cpu / rest1_cpu:.2f}x",
            )
            gql_rps, _ = wrk(gql_url, connections=32, token=token, body=gql_body, **common)
            out(
                "direct: GraphQL list c=32 req/s vs REST",
                f"{gql_rps:.0f} vs {rest_rps:.0f} = {gql_rps / rest_rps:.2f}x (goal >= 0.67)",
            )
            if quick:
                return rows
            # The 100k measurements go to the API itself (direct): dockyard serve's process also
            # runs the data plane, whose periodic full rebuild of the routes reads every
            # container; a few lines via Caddy show what that adds.

            started = time.monotonic()
            seed(server.database_url, spec)
            out("seeded 100k containers + revisions", f"{time.monotonic() - started:.1f} s")
            big, admin = server.tokens[BIG_OWNER], server.tokens["root"]
            with server.client(BIG_OWNER) as api:
                own = api.get("/v1/containers").json()
                own_total = own["total"]
                one_id = own["items"][0]["id"]
            with server.client("root") as api:
                all_total = api.get("/v1/containers?all=true").json()["total"]
            pages = [
                ("own page 1", "/v1/containers", big),
                ("own last page", f"/v1/containers?page={own_total // 10}", big),
                ("all=true page 1", "/v1/containers?all=true", admin),
                ("all=true last page", f"/v1/containers?all=true&page={all_total // 10}", admin),
            ]
            cursors = deep_cursors(server, own_total, all_total)
            if cursors:
                pages += [
                    ("own deep page by cursor", f"/v1/containers?after={cursors[0]}", big),
                    (
                        "all=true deep page by cursor",
                        f"/v1/containers?all=true&after={cursors[1]}",
                        admin,
                    ),
                ]
            pages += [
                ("GET /v1/containers/{id}", f"/v1/containers/{one_id}", big),
                ("GET /v1/containers/{id}/revisions", f"/v1/containers/{one_id}/revisions", big),
            ]
            for what, path, who in pages:
                _, p50 = wrk(direct_url + path, connections=1, token=who, **common)
                out(f"100k direct: {what} c=1 p50", f"{p50:.2f} ms (goal < 20)")
            one = json.dumps({"query": GQL_ONE.replace('"ID"', json.dumps(one_id))})
            _, p50 = wrk(gql_url, connections=1, token=big, body=one, **common)
            out("100k direct: GraphQL container c=1 p50", f"{p50:.2f} ms (goal < 20)")
            gql_own = json.dumps({"query": GQL_LIST})
            _, p50 = wrk(gql_url, connections=1, token=big, body=gql_own, **common)
            out("100k direct: GraphQL own page 1 c=1 p50", f"{p50:.2f} ms (goal < 20)")
            for what, path, who in pages[:1] + pages[-2:-1]:
                _, p50 = wrk(server.url + path, connections=1, token=who, **common)
                out(f"100k via Caddy: {what} c=1 p50", f"{p50:.2f} ms (goal < 20)")
            direct_idle = rss_mib(direct_proc.pid)
            listed = list_everything(server, direct_url)
            out(
                f"direct: RSS before / after listing {listed} rows",
                f"{direct_idle:.0f} / {rss_mib(direct_proc.pid):.0f} MiB",
            )
        finally:
            stop(direct_proc)
            stop(caddy_proc)
            stop(bare_proc)
            server.stop()
    return rows


def deep_cursors(server: Server, own_total: int, all_total: int) -> tuple[str, str] | None:
    """Cursors pointing near the end of the own and the all=true lists, if the API has them:
    the nextCursor of the last-but-one page of 100."""
    found = []
    for who, query, total in [(BIG_OWNER, "", own_total), ("root", "&all=true", all_total)]:
        with server.client(who) as api:
            page = api.get(f"/v1/containers?rowsPerPage=100&page={total // 100 - 1}{query}")
            cursor = page.json().get("nextCursor")
            if cursor is None:
                return None
            found.append(cursor)
    return found[0], found[1]


def list_everything(server: Server, base_url: str) -> int:
    """Read every row as ADMIN, 100 per page (by cursor when offered, else by page)."""
    listed = 0
    with server.client("root") as api:
        api.base_url = httpx.URL(base_url)
        cursor: str | None = None
        page = 1
        while True:
            query = f"/v1/containers?all=true&rowsPerPage=100&page={page}"
            if cursor:
                query = f"/v1/containers?all=true&rowsPerPage=100&after={cursor}"
            try:
                answer = api.get(query).json()
            except httpx.RemoteProtocolError:
                # Caddy drops a proxied connection now and then when the data plane loads a
                # new config (a known data-plane issue): ask again once.
                answer = api.get(query).json()
            listed += len(answer["items"])
            cursor = answer.get("nextCursor")
            page += 1
            if not answer["items"] or ("nextCursor" in answer and not cursor):
                return listed


def main() -> None:
    # SIGTERM unwinds like Ctrl-C: the servers and the PostgreSQL this run started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="per wrk measurement")
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--quick", action="store_true", help="skip the 100k measurements")
    args = parser.parse_args()
    ensure_wrk()
    results = []
    if args.only != "postgres":
        results += bench_database("SQLite", None, args.seconds, quick=args.quick)
    if args.only != "sqlite":
        pg_url = os.environ.get("DOCKYARD_BENCH_POSTGRES_URL")
        pg_dir = None
        if not pg_url:
            pg_dir = tempfile.mkdtemp(prefix="dockyard-bench-pg-")
            os.chmod(pg_dir, 0o755)
            pg_url = subprocess.run(
                ["bash", str(ROOT / "scripts/start-postgres.sh"), pg_dir, str(free_port())],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        try:
            results += bench_database("PostgreSQL", pg_url, args.seconds, quick=args.quick)
        finally:
            if pg_dir is not None:
                subprocess.run(
                    [
                        "runuser",
                        "-u",
                        "postgres",
                        "--",
                        "/usr/lib/postgresql/15/bin/pg_ctl",
                        "-D",
                        f"{pg_dir}/data",
                        "-m",
                        "fast",
                        "stop",
                    ],
                    check=False,
                    capture_output=True,
                )
                shutil.rmtree(pg_dir, ignore_errors=True)
    print("\n| what | result |\n|---|---|")
    for what, value in results:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
