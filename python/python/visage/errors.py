"""The exceptions of the visage package.

Both ways in raise the same classes with the same messages: the embedded
engine raises the class named after its error's kind, the gRPC client the
class of the server's status code (one to one), and the checks the package
makes itself before sending anything (shapes, dtypes, NaN, subjects,
duplicate ids) raise :class:`InvalidArgument`, or :class:`TypeError` for an
array of the wrong dtype.

Every class derives from :class:`Error`; ``err.code`` is the gRPC status
name (``"NOT_FOUND"``). :class:`InvalidArgument` is also a :class:`ValueError`
and :class:`NotFound` also a :class:`LookupError`, so code that catches the
built-in classes keeps working.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "Error",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "ResourceExhausted",
    "DataLoss",
    "Unavailable",
    "PermissionDenied",
    "Unauthenticated",
    "Internal",
    "DeadlineExceeded",
    "Closed",
]


class Error(Exception):
    """Base class of every error visage raises (besides :class:`TypeError`
    for arrays of the wrong dtype).

    Attributes:
        code: the gRPC status name of the error's class (``"NOT_FOUND"``).
        message: the engine's or server's message.
        committed_rows: for :meth:`visage.Gallery.add` split into several
            batches, how many rows earlier batches committed before this
            error (``None`` elsewhere). Those rows stay in the gallery.
    """

    code = "UNKNOWN"

    def __init__(self, message: str = "", committed_rows: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.committed_rows = committed_rows

    def __reduce__(self):  # keep committed_rows through pickling
        return (type(self), (self.message, self.committed_rows))


class InvalidArgument(Error, ValueError):
    """The call was wrong (a shape, a value, a name, a limit); nothing changed."""

    code = "INVALID_ARGUMENT"


class NotFound(Error, LookupError):
    """No such gallery, id or subject."""

    code = "NOT_FOUND"


class AlreadyExists(Error):
    """A gallery of that name exists."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(Error):
    """The gallery is not in the state the call needs: a trained head (for
    ``min_probability``), a calibrated threshold, the same model; or the data
    directory is locked by another process."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(Error):
    """A batch over its limit, a message over the server's limit, a full
    disk, or no fresh ids left to assign."""

    code = "RESOURCE_EXHAUSTED"


class DataLoss(Error):
    """A file of the gallery is damaged."""

    code = "DATA_LOSS"


class Unavailable(Error):
    """The server is unreachable or shutting down, or the gallery refuses
    writes after an I/O failure: retry later."""

    code = "UNAVAILABLE"


class PermissionDenied(Error):
    """The API key's role may not make this call."""

    code = "PERMISSION_DENIED"


class Unauthenticated(Error):
    """No API key, or one the server does not know."""

    code = "UNAUTHENTICATED"


class Internal(Error):
    """An I/O or server error the caller cannot act on."""

    code = "INTERNAL"


class DeadlineExceeded(Error, TimeoutError):
    """A remote call took longer than the ``timeout`` given to
    :func:`visage.connect`."""

    code = "DEADLINE_EXCEEDED"


class Closed(Error):
    """The database was closed (:meth:`visage.Database.close`)."""

    code = "CLOSED"


_BY_CODE: Dict[str, Type[Error]] = {
    c.code: c
    for c in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        DataLoss,
        Unavailable,
        PermissionDenied,
        Unauthenticated,
        Internal,
        DeadlineExceeded,
        Closed,
    )
}


def _from_code(code: str, message: str) -> Error:
    """The exception for a status code name (unknown codes: :class:`Error`
    with the code in the message). Used by the native module and the client."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = Error(f"{code}: {message}")
        err.code = code
        return err
    return cls(message)
