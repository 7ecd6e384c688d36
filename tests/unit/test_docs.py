"""A newcomer's path through the documentation: the README stays short and links every page
under docs/, each of its links leads somewhere, and `mkdocs build --strict` passes (a broken
link or anchor, or a page missing from the nav, fails it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 250


def test_the_readme_links_lead_somewhere_and_reach_every_page():
    targets = [t for t in LINK.findall(README) if not t.startswith(("http://", "https://"))]
    for target in targets:
        assert (REPO / target.split("#")[0]).exists(), f"README links {target}, which does not exist"
    pages = {p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")}
    assert pages - set(targets) == set(), "pages the README does not link"


def test_mkdocs_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in (REPO / "docs").glob("*.md"):
        expected = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert expected in built, page.name
