"""Type stubs of ``visage._native``, the engine embedded (Rust, pyo3).

Internal: ``visage.open(path)`` wraps :class:`Engine` in the package's API
(``visage.Database``). Arrays in are float32 (vectors) or uint64 (ids), C
order; every call releases the GIL; engine errors raise the class of
``visage.errors`` named after their kind.
"""

from os import PathLike
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

F32 = npt.NDArray[np.float32]
U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

class Engine:
    """An open data directory of galleries, embedded in this process."""

    def __init__(self, path: Union[str, PathLike[str]]) -> None:
        """Open (creating if needed) the data directory ``path``."""
    @property
    def path(self) -> str:
        """The data directory."""
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
    def close(self) -> None:
        """Wait for the calls in flight, stop background work and unlock the
        directory. Idempotent."""
    def create_gallery(self, name: str, dim: int, model: str, normalize: bool) -> Dict[str, object]:
        """Create a gallery; its info as a dict."""
    def gallery_info(self, name: str) -> Dict[str, object]:
        """One gallery's info as a dict."""
    def list_galleries(self) -> List[Dict[str, object]]:
        """Every gallery's info, sorted by name."""
    def drop_gallery(self, name: str) -> None:
        """Drop a gallery and delete its files."""
    def insert(
        self, name: str, vectors: F32, subjects: List[str], ids: Optional[U64] = None
    ) -> U64:
        """Insert one batch (N rows; one subject for all rows, or N); the
        rows' ids (given, or assigned by the gallery when ``ids`` is None)."""
    def search(
        self,
        name: str,
        probes: F32,
        k: int,
        max_distance: Optional[float] = None,
        with_subjects: bool = False,
        exact: bool = True,
    ) -> Tuple[U64, F32, Optional[List[str]], F32, F32]:
        """``(ids, distances, subjects, probabilities, similarities)``: (n, k)
        arrays padded with id 0, distance +inf, NaN; subjects a flat list of
        n * k ("" padding) when asked for."""
    def identify(
        self,
        name: str,
        probes: F32,
        k: int,
        min_probability: Optional[float] = None,
        max_distance: Optional[float] = None,
    ) -> Tuple[Bools, List[Optional[str]], List[str], U64, F32, F32, F32]:
        """``(known, subject, candidate_subjects (flat), candidate_ids,
        candidate_distances, candidate_probabilities, candidate_similarities)``."""
    def verify(
        self,
        name: str,
        a: F32,
        b_vectors: Optional[F32] = None,
        b_ids: Optional[U64] = None,
        b_subjects: Optional[List[str]] = None,
        max_distance: Optional[float] = None,
        min_probability: Optional[float] = None,
    ) -> Tuple[Bools, F32, F32, List[str], F32, F32, U64]:
        """``(same, distance, threshold, rule, probability, similarity,
        matched_id)``, one entry per row of ``a``."""
    def delete(self, name: str, ids: U64, subjects: List[str]) -> int:
        """Delete by id and by subject; live embeddings removed."""
    def compact(self, name: str) -> None:
        """Flush, then rewrite segments without their deleted rows."""
    def flush(self, name: str) -> None:
        """Write the in-memory rows to a segment."""
    def train_head(
        self,
        name: str,
        target_far: Optional[float] = None,
        max_pairs: Optional[int] = None,
        seed: Optional[int] = None,
        prior: Optional[float] = None,
    ) -> Dict[str, object]:
        """Train the scoring head; its info as a dict."""
    def head(self, name: str) -> Dict[str, object]:
        """The head's info as a dict (``trained`` False without one)."""
    def get(self, name: str, ids: U64) -> Tuple[F32, List[str], U64]:
        """The embeddings of the ids that exist, in request order."""
