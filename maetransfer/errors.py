"""The base class of every error a user can fix (a file, a key, a value): tools report it as one line naming the
file or key, without a traceback, and exit 1."""


class InputError(Exception):
    """Bad input or a bad setting; the message is one line that names the file or key and the problem."""
