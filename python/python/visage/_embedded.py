"""The embedded backend: ``visage._native.Engine`` with the few extras the
shared layer (``_api.py``) asks of a backend."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _native


class _Done:
    """A finished call, shaped as a future (``result``, ``done``)."""

    __slots__ = ("_value", "_error")

    def __init__(self, value: Any = None, error: Optional[BaseException] = None) -> None:
        self._value = value
        self._error = error

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class Embedded:
    """The engine in this process; every call releases the GIL."""

    # One batch at a time: the engine commits each before returning.
    pipeline = 1
    # Default batches are the gallery's per-call limit.
    request_bytes = 1 << 62

    def __init__(self, path: str) -> None:
        self._engine = _native.Engine(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def insert_async(
        self, name: str, vectors: np.ndarray, subjects: Any, ids: Optional[np.ndarray]
    ) -> _Done:
        try:
            return _Done(self._engine.insert(name, vectors, list(subjects), ids))
        except Exception as e:  # noqa: BLE001 - handed to the caller by result()
            return _Done(error=e)

    def get(self, name: str, ids: np.ndarray, dim: int) -> Any:
        return self._engine.get(name, ids)
