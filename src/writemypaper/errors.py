"""The one exception type that the CLI turns into a one-line message and a non-zero exit.

Raise `UserError` for anything the user can fix (a bad path, a malformed file, an option out of range).
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line: `writemypaper: error: <message>`."""

    exit_code = 2
