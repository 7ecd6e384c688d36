"""A newcomer's path through the documentation: the README stays short and links every page
under docs/, each of its links leads somewhere, and `mkdocs build --strict` passes (a broken
link or anchor, or a page missing from the nav, fails it)."""

import ast
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


TREE_START = "<!-- tree: "
TREE_END = "<!-- end tree -->"


def _first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?[.?!])(\s|$)", paragraph)
    return (match.group(1) if match else paragraph).rstrip(".")


def package_tree() -> list[str]:
    """The package's folders and modules, each with its docstring's first sentence."""
    root = REPO / "reflection_assets"
    lines = []

    def walk(folder: Path, depth: int) -> None:
        for path in sorted(folder.iterdir()):
            if path.name.startswith(("_", ".")) or path.name == "__pycache__":
                continue
            indent = "  " * depth
            if path.is_dir() and (path / "__init__.py").exists():
                summary = _first_sentence(path / "__init__.py")
                lines.append(f"{indent}- `{path.name}/`" + (f" — {summary}" if summary else ""))
                walk(path, depth + 1)
            elif path.suffix == ".py":
                lines.append(f"{indent}- `{path.name}` — {_first_sentence(path)}")

    walk(root, 0)
    return lines


def test_the_layout_page_is_drawn_from_the_tree():
    page = REPO / "docs" / "layout.md"
    text = page.read_text()
    head, rest = text.split(TREE_START, 1)
    marker, rest = rest.split("\n", 1)
    _, tail = rest.split(TREE_END, 1)
    wanted = head + TREE_START + marker + "\n" + "\n".join(package_tree()) + "\n" + TREE_END + tail
    if os.environ.get("UPDATE_SNAPSHOTS"):
        page.write_text(wanted)
    assert text == wanted, "docs/layout.md's tree differs from the package: UPDATE_SNAPSHOTS=1 after a change"
    for module in (REPO / "reflection_assets").rglob("*.py"):
        if module.name != "__init__.py" and "__pycache__" not in module.parts:
            assert f"`{module.name}`" in text, module
