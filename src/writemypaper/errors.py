"""The one exception type that the CLI turns into one-line messages and a non-zero exit.

Raise `UserError` for anything the user can fix (a bad path, a malformed file, an option out of range), with every
problem found so far: `UserError(*problems)`. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Problems with the user's input, reported one a line: `writemypaper: error: <problem>`."""

    exit_code = 2

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = list(problems)
