"""Error types whose messages are meant for a person.

Anything raised as a `CifarError` is caught by the CLI and the dashboard and
shown as its message alone (no traceback), so the message must say what went
wrong and what to do next.
"""


class CifarError(Exception):
    """Base class for every expected, user-facing failure."""


class DataError(CifarError):
    """A dataset source is missing, unreadable or not laid out as expected."""


class ImageError(CifarError):
    """A user image cannot be decoded safely (wrong format, broken, too big)."""


class ModelError(CifarError):
    """Unknown model name, bad model option, or missing pretrained weights."""


class RunError(CifarError):
    """A run folder is missing, incomplete, or cannot be resumed."""


class TrainingError(CifarError):
    """Training diverged (NaN loss) or otherwise failed visibly."""
