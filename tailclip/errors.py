"""The project's user-facing errors.

Every error that a user can act on (a bad config, a missing file, a run folder in use) is a
`TailCLIPError`: the command lines print its message in one line and exit 1. Anything else
is a bug of ours and keeps its traceback.
"""


class TailCLIPError(Exception):
    """An error in the user's inputs or set-up, with a message that says what to change."""
