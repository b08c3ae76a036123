"""visage: a database of face embeddings, embedded or over gRPC.

Two ways in, one API::

    import visage

    with visage.open("faces-data") as db:            # the engine in this process
        g = db.create_gallery("staff", dim=128)
        ids = g.add(vectors, subjects)               # float32 [N, 128]
        D, I = g.search(probes, k=10)                # SQUARED L2, as faiss

    db = visage.connect("localhost:50051")           # a visage-server

Distances are SQUARED L2 everywhere (faiss's convention); the ``tolerance``
arguments take a PLAIN L2 distance (face_recognition's ``tolerance=0.6``)
and square it. Errors are the classes of :mod:`visage.errors`.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from . import errors
from ._api import Database, Gallery
from ._types import GalleryInfo, HeadInfo, Identification, Verification
from .errors import (
    AlreadyExists,
    Closed,
    DataLoss,
    DeadlineExceeded,
    Error,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

try:
    from ._native import __version__
except ImportError:  # pragma: no cover - a source checkout without the build
    __version__ = "0+unknown"

__all__ = [
    "open",
    "connect",
    "Database",
    "Gallery",
    "GalleryInfo",
    "HeadInfo",
    "Identification",
    "Verification",
    "errors",
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
    "__version__",
]


def open(path: Union[str, "os.PathLike[str]"]) -> Database:  # noqa: A001 - visage.open
    """Open (creating if needed) the data directory ``path`` with the engine
    embedded in this process.

    Only one process may open a directory at a time (FailedPrecondition
    otherwise); within the process share the one Database across threads.
    Close it (or use ``with``) to release the directory.
    """
    from ._embedded import Embedded

    p = os.fspath(path)
    return Database(Embedded(p), p, "embedded")


def connect(
    address: str = "localhost:50051",
    api_key: Optional[str] = None,
    tls_ca: Optional[Union[str, bytes, "os.PathLike[str]"]] = None,
    timeout: Optional[float] = None,
) -> Database:
    """Connect to a visage server over gRPC.

    Args:
        address: ``host:port``; ``https://host:port`` asks for TLS (checked
            against the system's roots unless ``tls_ca`` is given),
            ``http://host:port`` for plain text.
        api_key: sent as ``authorization: Bearer KEY`` on every call (servers
            started with ``--api-keys``).
        tls_ca: the CA that signed the server's certificate: a path to a PEM
            file, or the PEM bytes. Implies TLS.
        timeout: seconds each call may take (None: no deadline);
            DeadlineExceeded past it.

    The channel connects lazily: an unreachable server shows as Unavailable
    at the first call.
    """
    from ._remote import Remote

    remote = Remote(address, api_key=api_key, tls_ca=tls_ca, timeout=timeout)
    return Database(remote, remote.target, "remote")
