"""The one error class users see: its own module, so that every stage imports it without the package root."""


class TilefillError(Exception):
    """A user-facing error: the message is one line that says what is wrong and what to do."""


class InputReadError(TilefillError):
    """An input's pixels could not be read (a truncated or damaged file, one gone mid-run): the message names
    the file and the window. Apart from :class:`TilefillError` so that no stage reports it as its own
    write failing."""
