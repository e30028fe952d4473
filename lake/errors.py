"""One exception type for problems a user can fix (bad path, wrong version, mismatch).

Command lines catch `LakeError` and print its message alone (no traceback): the
message names the file and the problem, and says what to do where that is known.
"""


class LakeError(Exception):
    """A user-facing error: its message is the whole report."""
