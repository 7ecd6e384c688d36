"""The trainer's process: `python -m reflection_assets.train STAGING/train_spec.json`, or
under `torchrun --nproc-per-node N -m reflection_assets.train …` or `accelerate launch`.

The adapter assets start it through Dagster Pipes (PipesSubprocessClient): the main
process then sends its log lines, every logging step's loss and the final metrics to the
Dagster run, so the UI shows the training as it goes. Started by hand (on a GPU host, in a
Slurm job), it prints them instead; either way it leaves its result in the staging folder
(engines/student/trainer.py), which the adapter asset registers when it runs again.

Exit status: 0 trained; 2 the training cannot start (the message is in error.txt and on
stderr); 3 another process is training the same staging folder; anything else a crash."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from pathlib import Path

# Set by the launching step: "pid:start-time" of the process whose death must end this one
# (a SIGKILLed Dagster step cannot forward anything; without this its trainer trains on).
PARENT_ENV = "REFLECTION_TRAIN_PARENT"
LOCK_WAIT_S = 60.0


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with
    the pid, it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def parent_token() -> str:
    return f"{os.getpid()}:{process_start(os.getpid()) or ''}"


def _watch_parent(token: str) -> None:
    pid_text, _, start = token.partition(":")
    pid = int(pid_text)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            current = process_start(pid)
            if current is None or (start and current != start):
                print(f"the process that launched this training ({pid}) is gone: stopping", file=sys.stderr, flush=True)
                os._exit(4)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _lock(staging: Path):
    """One training per staging folder at a time (held by the main process only)."""
    handle = (staging / ".lock").open("a+")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                print(f"{staging}: being trained by process {holder}; wait for it or stop it", file=sys.stderr, flush=True)
                sys.exit(3)
            time.sleep(0.5)


@contextlib.contextmanager
def _reporting(main: bool):
    """(log, on_step, report): through Dagster Pipes when a Dagster step launched this and
    this is the main process; to stderr otherwise."""
    def stderr(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not (main and os.environ.get("DAGSTER_PIPES_CONTEXT")):
        yield stderr, None, lambda result: None
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        def log(line: str) -> None:
            pipes.log.info(line)
            stderr(line)

        def on_step(step: int, loss: float) -> None:
            pipes.report_custom_message({"step": step, "loss": loss})

        yield log, on_step, lambda result: pipes.report_custom_message({"result": result})


def _leave_the_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave_datasets_out() -> None:
    """transformers' Trainer imports Hugging Face `datasets` where it is installed, and with it
    pandas and pyarrow (0.45 s of each training process's start, measured); the trainer reads
    its rows with polars and never uses them. A None entry in sys.modules makes transformers
    see `datasets` as not installed, in this process only."""
    sys.modules.setdefault("datasets", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m reflection_assets.train STAGING/train_spec.json", file=sys.stderr)
        return 2
    staging = Path(argv[0]).resolve().parent
    leave_datasets_out()
    if os.environ.get(PARENT_ENV):
        _watch_parent(os.environ[PARENT_ENV])
    is_main = int(os.environ.get("RANK", "0")) == 0
    lock = _lock(staging) if is_main else None
    from reflection_assets.engines.student.trainer import ERROR, run_training
    from reflection_assets.errors import UserError

    if is_main:
        (staging / ERROR).unlink(missing_ok=True)  # a message from an earlier attempt
    with _reporting(is_main) as (log, on_step, report):
        try:
            result = run_training(staging, log, on_step)
        except UserError as exc:
            if is_main:
                (staging / ERROR).write_text(str(exc))
            print(f"training cannot start: {exc}", file=sys.stderr, flush=True)
            return 2
        report(result)
    _leave_the_group()
    if lock is not None:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
