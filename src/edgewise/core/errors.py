"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class EdgewiseError(Exception):
    """A mistake in the user's input or environment, explained in one line."""
