"""The project's own docs stand alone in a clone: no links outside the repository, and every
relative link points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_docs_link_only_inside_the_repository() -> None:
    for doc in DOCS:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://", target):
                continue
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), (doc.name, target)
            assert resolved.exists(), (doc.name, target)


def test_readme_tells_a_newcomer_what_the_issue_asked_for() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    for needed in (
        "scripts/setup-podman.sh",  # the first command installs the engine
        "/etc/containers/containers.conf",
        "podman import",
        "podman build",
        "*.localhost",
        "dockyard deploy",
        "NoRuntime",
    ):
        assert needed in text, needed
