"""One exception type for bad input, so the CLI can turn it into a one-line message and a non-zero exit."""


class FpindexError(Exception):
    """A problem with the user's input or environment (not a bug): the message is shown as is."""


class FpindexWarning(UserWarning):
    """Something fpindex recovered from but the user should know (e.g. a damaged cache entry recomputed);
    the CLI prints it as one line `fpindex: warning: …`."""
