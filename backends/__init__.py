"""fsnn.backends: the engines that run a spec (torch, nest, spinnaker, spinnaker-emulated), each
behind the `Backend` protocol.

``fsnn.backends.get("nest", threads=2)`` builds one (options are checked against its
constructor first); ``fsnn.backends.names()`` lists them. A backend's simulator is imported
only when the backend is built.
"""

from __future__ import annotations

from fsnn.backends.base import BACKENDS, Backend, BackendError, BatchResult, get_backend


def get(name: str, **options: object) -> Backend:
    """Backend ``name`` built with constructor ``options``: ``backend.build(net)``, then
    ``backend.run(x)`` -> `BatchResult`, then ``backend.close()``.
    An unknown name or option is a `BackendError` before anything is built."""
    return get_backend(name, **options)


def names() -> list[str]:
    """The backends fsnn knows (whether each one's simulator is installed is checked by
    `get`)."""
    return sorted(BACKENDS)


__all__ = ["Backend", "BackendError", "BatchResult", "get", "names"]
