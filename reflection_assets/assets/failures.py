"""The asset boundary for errors meant for the user: a UserError becomes a Dagster failure
whose description is its message (one clear line in the UI and the run summary); anything
else is a bug and keeps its traceback."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from reflection_assets.errors import UserError


@contextmanager
def user_errors_fail_the_step() -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        raise dg.Failure(description=str(exc)) from None
