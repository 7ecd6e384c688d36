"""The package as a deployment installs it: `pip wheel .`, the wheel installed (not editable)
into a fresh environment, and a stage run from a folder that has nothing of the checkout.
The fresh environment borrows this one's dependencies through a .pth line (installing torch
again would take minutes) but gets reflection_assets only from the wheel."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_wheel_carries_its_sql_and_runs_a_stage_from_anywhere(tmp_path):
    # Built from what the package is made of, copied out: nothing else of the checkout can
    # leak into the wheel, and the build leaves nothing behind in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "reflection_assets", source / "reflection_assets", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source))
    [wheel] = dist.glob("reflection_assets-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = sorted(p.name for p in (REPO / "reflection_assets" / "sql").glob("*.sql"))
    assert sql and {f"reflection_assets/sql/{name}" for name in sql} <= names
    assert {"reflection_assets/instance/dagster.yaml", "reflection_assets/data/sample_alpaca.json"} <= names

    fresh = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", str(fresh))
    python = fresh / "bin" / "python"
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{fresh / 'bin'}:/usr/bin:/bin", "DAGSTER_HOME": str(elsewhere / "home"), "REFLECTION_SHARDS": "2"}
    where = run(str(python), "-c", "import reflection_assets; print(reflection_assets.__file__)", cwd=elsewhere, env=env)
    assert where.stdout.startswith(str(fresh)), where.stdout  # the wheel's copy, not the checkout
    run(str(fresh / "bin" / "reflection"), "datasets", "add", "sample", "bundled:sample", cwd=elsewhere, env=env)
    ran = run(str(fresh / "bin" / "reflection"), "run", "--select", "raw_dataset", "--shard", "00", cwd=elsewhere, env=env)
    assert "1 of 1 runs succeeded" in ran.stdout
    assert (elsewhere / "home" / "dagster.yaml").exists()  # the instance the package writes
    with duckdb.connect(str(elsewhere / "home" / "reflection.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.records WHERE shard = 0").fetchone()[0] > 0
        views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"records", "oracle_calls", "record_models"} <= views  # every SQL file was applied
