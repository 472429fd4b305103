"""The one error class users see: its own module, so that every stage imports it without the package root."""


class TilefillError(Exception):
    """A user-facing error: the message is one line that says what is wrong and what to do."""
