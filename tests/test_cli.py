"""The dockyard command: tokens, migrations, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.auth import LocalKeys
from app.cli import main
from app.settings import Settings


def test_token_prints_only_a_verifiable_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKYARD_DATA_DIR", str(tmp_path))
    assert main(["token", "--sub", "alice", "--role", "ADMIN", "--ttl", "60"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.count(".") == 2
    principal = LocalKeys(Settings(data_dir=tmp_path)).verify(out.strip())
    assert principal.subject == "alice" and principal.is_admin


def test_token_rejects_bad_ttl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_DATA_DIR", str(tmp_path))
    assert main(["token", "--sub", "a", "--ttl", "0"]) == 2


def test_migrate_creates_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DOCKYARD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_DATABASE_URL", database_url)
    assert main(["migrate"]) == 0
    engine = sa.create_engine(database_url)
    names = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"containers", "revisions", "alembic_version"} <= names


def test_serve_help_documents_the_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in (
        "DOCKYARD_DATABASE_URL",
        "DOCKYARD_RUNTIME",
        "DOCKYARD_INGRESS_DOMAIN",
        "DOCKYARD_AUTH_ISSUER",
        "--port",
        "--host",
    ):
        assert name in result.stdout
    # each setting's default is shown
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("DOCKYARD_")]
    assert lines and all("[default: " in line for line in lines)
    assert "DOCKYARD_READINESS_TIMEOUT_SECONDS" in result.stdout
    assert "[default: 120]" in result.stdout and "[default: 8000]" in result.stdout


def test_token_finds_the_data_dir_above_and_warns_when_it_creates_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if any((parent / ".dockyard" / "signing-key.json").exists() for parent in tmp_path.parents):
        pytest.skip("a .dockyard key exists above the test directory")
    monkeypatch.delenv("DOCKYARD_DATA_DIR", raising=False)
    project = tmp_path / "project"
    (project / "sub" / "dir").mkdir(parents=True)
    monkeypatch.chdir(project)
    assert main(["token", "--sub", "alice"]) == 0  # no key anywhere: a new one, with a warning
    created = capsys.readouterr()
    assert "NEW signing key" in created.err and "DOCKYARD_DATA_DIR" in created.err
    key_file = project / ".dockyard" / "signing-key.json"
    assert str(key_file) in created.err
    monkeypatch.chdir(project / "sub" / "dir")  # found from below, as git finds its repository
    assert main(["token", "--sub", "bob"]) == 0
    found = capsys.readouterr()
    assert f"signed with {key_file}" in found.err and "NEW" not in found.err
    principal = LocalKeys(Settings(data_dir=project / ".dockyard")).verify(found.out.strip())
    assert principal.subject == "bob"
    assert not (project / "sub" / "dir" / ".dockyard").exists()


def test_token_help_documents_lifetime_and_leeway() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "token", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(result.stdout.split())
    assert "3600" in text and "DOCKYARD_AUTH_LEEWAY_SECONDS" in text and "30" in text
