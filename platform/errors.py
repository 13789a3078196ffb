"""The one base class of fsnn's user-facing errors."""

from __future__ import annotations


class FsnnError(Exception):
    """Input fsnn cannot work with (a config, a data set, a spec, a checkpoint, a backend, a
    tracking store, a Ray cluster, ...). The message names the problem and the fix; it is
    raised before any work that would be lost. ``except fsnn.FsnnError`` catches them all; the
    CLI prints the message as one line and exits with code 2."""


__all__ = ["FsnnError"]
