"""Where the CLI finds its server and token: ``DOCKYARD_URL`` / ``DOCKYARD_TOKEN`` from the
environment first, else the user config file written by ``dockyard login``.

The file is ``$XDG_CONFIG_HOME/dockyard/config.json`` (``~/.config/dockyard/config.json`` by
default), created with mode 0600 because it holds a bearer token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockyard" / "config.json"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None
    source: str
    """Where the values came from, for messages: ``environment``, the file, or ``defaults``."""


def load() -> ClientConfig:
    stored: dict[str, str] = {}
    path = config_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict):
            stored = {k: v for k, v in data.items() if isinstance(v, str)}
    env_url = os.environ.get("DOCKYARD_URL")
    env_token = os.environ.get("DOCKYARD_TOKEN")
    url = env_url or stored.get("url") or DEFAULT_URL
    token = env_token or stored.get("token")
    if env_url or env_token:
        source = "environment"
    elif stored:
        source = str(path)
    else:
        source = "defaults"
    return ClientConfig(url=url.rstrip("/"), token=token, source=source)


def save(url: str, token: str) -> Path:
    """Write the config file with mode 0600 (never readable by others, even for a moment)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"url": url.rstrip("/"), "token": token}, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
