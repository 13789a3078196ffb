"""The one exception the data layer raises."""

from __future__ import annotations

from fsnn.platform.errors import FsnnError


class DataError(FsnnError):
    """A data set is unknown, missing, unreachable or corrupt.

    The message is one line that says what went wrong and what to do about it.
    """
