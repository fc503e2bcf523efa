"""Run a private Podman API service and build the test images, all without a registry.

The images are ``podman import``-ed from a rootfs tar holding a static busybox, so the tests need
no network: ``localhost/dockyard-test-httpd:v1``/``v2`` serve ``/www/index.html`` on port 8080,
``localhost/dockyard-test-crash:v1`` prints two lines and exits 3, and
``localhost/dockyard-test-logger:v1`` prints a numbered stdout and stderr line every 0.2 s, and
``localhost/dockyard-test-echo:v1`` answers ``/cgi-bin/echo`` with the method, query, headers
and body it received, and ``localhost/dockyard-test-slow:v1``/``v2`` answer ``/cgi-bin/slow``
after 0.2 s (requests that stay in flight, for the autoscaler).
``localhost/dockyard-test-ready-late:v1`` serves at once but creates
``/www/ready`` only 5 s after it starts (``GET /ready``: 404, then 200), and
``localhost/dockyard-test-sickly:v1`` serves ``/healthz`` for 3 s after its first start, then
404 (after a restart it stays healthy).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "sleep", "httpd", "cat", "ls", "env", "sort")

HTTPD_V1 = "localhost/dockyard-test-httpd:v1"
HTTPD_V2 = "localhost/dockyard-test-httpd:v2"
CRASH = "localhost/dockyard-test-crash:v1"
LOGGER = "localhost/dockyard-test-logger:v1"
ECHO = "localhost/dockyard-test-echo:v1"
SLOW_V1 = "localhost/dockyard-test-slow:v1"
SLOW_V2 = "localhost/dockyard-test-slow:v2"
SLOW_SCRIPT = """#!/bin/sh
sleep 0.2
echo "Content-Type: text/plain"
echo ""
cat /www/index.html
"""
READY_LATE = "localhost/dockyard-test-ready-late:v1"
SICKLY = "localhost/dockyard-test-sickly:v1"
READY_AFTER_SECONDS = 5
ECHO_SCRIPT = """#!/bin/sh
echo "Content-Type: text/plain"
echo "X-Echo: yes"
echo ""
echo "method=$REQUEST_METHOD"
echo "query=$QUERY_STRING"
env | sort | grep '^HTTP_'
echo "body:"
cat
"""

RUN_LABEL = "dockyard.dev/test-run"
"""Every engine container a test or bench run creates carries this label with the run's own value
(``DOCKYARD_DOCKER_LABELS``), and the run removes only those: a real Dockyard may run beside it."""
RUN_ID = uuid.uuid4().hex[:12]
RUN_LABELS = {RUN_LABEL: RUN_ID}
RUN_INSTANCE = f"test-{RUN_ID}"
"""The installation id of every ``DockerRuntime`` a test builds in process. A runtime without one
sees every Dockyard container on the engine, and a reconciler's resync removes the ones its
database does not know as orphans: a developer's real Dockyard (and another run's containers)
would be removed. With it, a runtime sees only what this run created."""


def label_this_run() -> None:
    """Make every Dockyard started from here on (in process or as a subprocess) label its engine
    containers with this run's label."""
    os.environ["DOCKYARD_DOCKER_LABELS"] = json.dumps(RUN_LABELS)


def remove_run_containers() -> None:
    """Force-remove the engine containers of this run, and nothing else."""
    _podman(
        "rm",
        "--force",
        "--time",
        "0",
        "--filter",
        f"label={RUN_LABEL}={RUN_ID}",
        "--all",
        check=False,
    )


PAGE_V1 = "dockyard test page v1\n"
PAGE_V2 = "dockyard test page v2\n"
PAGE_LATE = "dockyard test page ready-late\n"

HTTPD_CMD = '["/bin/busybox","httpd","-f","-p","8080","-h","/www"]'
CRASH_CMD = '["/bin/sh","-c","echo boom; echo oops >&2; exit 3"]'
LOGGER_CMD = (
    '["/bin/sh","-c","i=0; while true; do i=$((i+1)); echo line $i; echo err $i >&2; '
    'sleep 0.2; done"]'
)
READY_LATE_CMD = (
    f'["/bin/sh","-c","(sleep {READY_AFTER_SECONDS}; echo ok > /www/ready) & '
    'exec /bin/busybox httpd -f -p 8080 -h /www"]'
)
SICKLY_CMD = (
    '["/bin/sh","-c","echo ok > /www/healthz; if [ ! -e /tmp/sick-once ]; then '
    "echo x > /tmp/sick-once; (sleep 3; /bin/busybox rm /www/healthz) & fi; "
    'exec /bin/busybox httpd -f -p 8080 -h /www"]'
)

IMAGES: dict[str, tuple[str, str]] = {
    HTTPD_V1: (PAGE_V1, HTTPD_CMD),
    HTTPD_V2: (PAGE_V2, HTTPD_CMD),
    CRASH: (PAGE_V1, CRASH_CMD),
    LOGGER: (PAGE_V1, LOGGER_CMD),
    ECHO: (PAGE_V1, HTTPD_CMD),
    SLOW_V1: (PAGE_V1, HTTPD_CMD),
    SLOW_V2: (PAGE_V2, HTTPD_CMD),
    READY_LATE: (PAGE_LATE, READY_LATE_CMD),
    SICKLY: (PAGE_V1, SICKLY_CMD),
}


def podman_available() -> bool:
    return shutil.which("podman") is not None and BUSYBOX.exists()


def _podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def image_exists(name: str) -> bool:
    return _podman("image", "exists", name, check=False).returncode == 0


def _rootfs_tar(workdir: Path, page: str) -> Path:
    root = workdir / "rootfs"
    if root.exists():
        shutil.rmtree(root)
    (root / "bin").mkdir(parents=True)
    (root / "www").mkdir()
    (root / "tmp").mkdir()
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "www" / "index.html").write_text(page)
    # busybox httpd runs /www/cgi-bin/* as CGI: `echo` answers with the request it received
    (root / "www" / "cgi-bin").mkdir()
    script = root / "www" / "cgi-bin" / "echo"
    script.write_text(ECHO_SCRIPT)
    script.chmod(0o755)
    slow = root / "www" / "cgi-bin" / "slow"
    slow.write_text(SLOW_SCRIPT)
    slow.chmod(0o755)
    tar_path = workdir / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname=".")
    return tar_path


def build_image(name: str, page: str, cmd: str) -> None:
    """Import a busybox rootfs as ``name`` with the given page and CMD (exec form JSON)."""
    with tempfile.TemporaryDirectory(prefix="dockyard-img-") as tmp:
        tar_path = _rootfs_tar(Path(tmp), page)
        _podman("import", "--change", f"CMD {cmd}", str(tar_path), name)


def ensure_test_images() -> None:
    """Build every test image that is not present yet (cached across runs)."""
    for name, (page, cmd) in IMAGES.items():
        if not image_exists(name):
            build_image(name, page, cmd)


@dataclass
class PodmanService:
    """A ``podman system service`` listening on a private unix socket."""

    socket_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def _socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def start_service(directory: Path, *, timeout: float = 30) -> PodmanService:
    """Start ``podman system service --time=0`` on ``directory/podman.sock`` and wait for it."""
    socket_path = directory / "podman.sock"
    log_path = directory / "podman-service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    service = PodmanService(socket_path=socket_path, process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"podman system service exited with {process.returncode}: "
                f"{log_path.read_text(errors='replace')[-2000:]}"
            )
        if socket_path.exists() and _socket_accepts(socket_path):
            return service
        time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"podman system service did not open {socket_path} within {timeout}s")
