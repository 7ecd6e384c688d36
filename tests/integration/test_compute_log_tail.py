"""A step's captured output mirrored by a thread (dagster_private.install_threaded_log_tail):
what the step and its child processes print lands in the files the UI shows and, as
before, where the run's stdout and stderr go, the last lines included; no `tail` process is
started. The run is a process of its own, whose stdout and stderr are pipes (as a
`reflection run` under a terminal or a CI log): inside pytest, sys.stdout is not fd 1."""

import json
import subprocess
import sys

import dagster as dg

from tests.conftest import REPO


@dg.op
def chatty() -> None:
    print("printed by the step")
    for i in range(200):
        print(f"line {i} of many")
    # a child process writes to the same descriptor, as the trainer and torchrun do
    subprocess.run([sys.executable, "-c", "import sys; print('from a child'); print('child err', file=sys.stderr)"],
                   check=True)
    print("the step's last line", flush=True)


@dg.job
def talks():
    chatty()


RUN = """
import json, subprocess, sys
import dagster as dg
from dagster._core.execution import compute_logs
from reflection_assets import dagster_private
from tests.integration.test_compute_log_tail import talks

started = []
real_popen = subprocess.Popen
def recording(args, *rest, **kwargs):
    if args[0] == "tail" or any("watch_orphans" in str(a) for a in args):
        started.append([str(a) for a in args])
    return real_popen(args, *rest, **kwargs)
compute_logs.subprocess.Popen = recording
if sys.argv[2] == "thread":
    dagster_private.install_threaded_log_tail()
with dg.instance_for_test(temp_dir=sys.argv[1]) as instance:
    assert talks.execute_in_process(instance=instance).success
with open(sys.argv[1] + "/started.json", "w") as out:
    json.dump(started, out)
"""


def run_job(folder, how: str) -> tuple[dict[str, str], subprocess.CompletedProcess, list]:
    done = subprocess.run([sys.executable, "-c", RUN, str(folder), how], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    captured = {path.suffix: path.read_text() for path in folder.rglob("*") if path.suffix in (".out", ".err")}
    return captured, done, json.loads((folder / "started.json").read_text())


def test_a_steps_output_is_captured_and_mirrored_without_a_tail_process(tmp_path):
    captured, done, started = run_job(tmp_path, "thread")
    for text in (captured[".out"], done.stdout):
        assert "printed by the step" in text and "line 199 of many" in text and "from a child" in text
        assert text.rstrip().endswith("the step's last line")
    assert "child err" in captured[".err"] and "child err" in done.stderr
    assert started == []  # Dagster's way: `tail -F` and a Python watcher per stream (the test below)


def test_dagster_mirrors_with_tail_processes_where_not_patched(tmp_path):
    captured, done, started = run_job(tmp_path, "tail")
    assert "from a child" in captured[".out"] and "child err" in captured[".err"]
    assert [args[0] for args in started].count("tail") == 2, started
    assert sum("watch_orphans" in " ".join(args) for args in started) == 2, started
