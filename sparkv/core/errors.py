"""Errors a user can act on: the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input from the user (a file, a name, a size); the message says what and where."""
