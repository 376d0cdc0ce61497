"""User-facing errors.

A :class:`UserError` is a mistake in what the user gave us (a recipe key, a file,
a name). The CLI prints its message on one line and exits with code 2; nothing
else is caught there, so internal bugs keep their tracebacks.
"""


class UserError(ValueError):
    """A mistake in user input; the message names the bad key, file, row or name."""


class RunHalted(UserError):
    """A run stopped on purpose: continuing would train on, or save, numbers gone wrong
    (non-finite losses, failing rewards). The message says what and what to change."""


def missing_file(what: str, path: object, where: str, fix: str) -> UserError:
    """The one shape of every "file not found" error, from ``train``, ``eval`` and
    ``report`` alike: what was looked for, where, where that path came from, what to do::

        <what> not found: <path> (<where>); <fix>

    ``where`` names the recipe key or argument the path came from (``data.train.source``,
    ``--annotations``); ``fix`` is one clause. Returned, not raised: ``raise
    missing_file(...)`` keeps the raise visible at the call site."""
    return UserError(f"{what} not found: {path} ({where}); {fix}")
