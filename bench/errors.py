"""The one error the bench raises on purpose: its text is what the user sees, no traceback."""


class BenchError(Exception):
    """A failure that stops the bench (a tool missing, a server that did not start, a timeout)."""
