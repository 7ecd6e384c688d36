"""The package's layers, as docs/layout.md draws them: `method/` is pure and imports nothing
else of the package; `engines/` never imports the Dagster layer (`assets/`, the CLI, the
runner); and the engines' domains build on each other in one order, so that a domain can be
read knowing only those before it. Every import counts, those inside functions too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "reflection_assets"
# engines/ domains, each importing only those before it (and settings.py, method/, errors).
DOMAINS = ["store", "data", "models", "oracle", "reflection", "student", "selection", "benchmark", "planning"]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reflection_assets"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("reflection_assets"))
    return found


def modules(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.py") if "__pycache__" not in p.parts]


def test_method_is_pure_of_the_rest_of_the_package():
    for path in modules(PACKAGE / "method"):
        bad = {m for m in imports(path) if not m.startswith(("reflection_assets.method", "reflection_assets.errors"))}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_engines_never_import_the_dagster_layer():
    for path in modules(PACKAGE / "engines"):
        bad = {m for m in imports(path) if m.startswith(("reflection_assets.assets", "reflection_assets.cli",
                                                          "reflection_assets.headless.runner", "reflection_assets.definitions",
                                                          "reflection_assets.headless.status", "reflection_assets.headless.run_workers"))}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"


def test_each_engine_domain_imports_only_the_domains_before_it():
    assert sorted(p.name for p in (PACKAGE / "engines").iterdir() if (p / "__init__.py").exists()) == sorted(DOMAINS)
    for position, domain in enumerate(DOMAINS):
        allowed = set(DOMAINS[: position + 1])
        for path in modules(PACKAGE / "engines" / domain):
            used = {m.split(".")[2] for m in imports(path) if m.startswith("reflection_assets.engines.")}
            used.discard("settings")
            assert used <= allowed, f"{path.relative_to(PACKAGE)} imports {sorted(used - allowed)}, after {domain}"
