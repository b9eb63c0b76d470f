"""The one exception type users see as a message, not a traceback."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with code 2."""


class Cancelled(Exception):
    """A host asked the running job to stop (Cancel button, Ctrl-C)."""
