"""The one base class of the errors meant for the person running the pipeline.

A `UserError` is a mistake the user can fix (a file that does not parse, a stage not yet
materialized, a setting that cannot work); its message names the file, row or setting and
what was expected. The edges catch it (the CLI prints it as one line, an asset turns it into
a Dagster failure with that description); anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """An error whose message is meant for the user, as it is."""


class SettingsError(UserError, ValueError):
    """A setting (an environment variable, a resource field, an asset config value) that
    cannot work. Also a ValueError: it is a bad value."""
