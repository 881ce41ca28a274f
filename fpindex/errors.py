"""One exception type for bad input, so the CLI can turn it into a one-line message and a non-zero exit."""


class FpindexError(Exception):
    """A problem with the user's input or environment (not a bug): the message is shown as is."""


class FpindexWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one line)."""
