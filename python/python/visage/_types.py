"""The result types of the visage API: plain frozen dataclasses, the same in
both modes (embedded and remote)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["GalleryInfo", "HeadInfo", "Identification", "Verification"]


def _pick(cls, d: Dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class GalleryInfo:
    """A gallery's statistics at one moment (:meth:`visage.Gallery.info`).

    Attributes:
        name: the gallery's name.
        dim: values per vector, fixed at creation.
        model: the model recorded at creation ("" for none).
        normalize: whether the gallery stores unit vectors and normalises
            probes (for models compared by cosine).
        live: live embeddings (``len(gallery)``).
        deleted: deleted or replaced embeddings still on disk until
            :meth:`visage.Gallery.compact`.
        subjects: distinct subjects with at least one live embedding.
        segments: segment files.
        bytes_on_disk: bytes of all files of the gallery.
        memtable_rows: rows held in memory (and the write-ahead log), not yet
            in a segment.
        head_trained: whether a scoring head is trained.
        open_logit_threshold: the open-set (identification) threshold on the
            head's logit in use now, or None.
        open_distance_threshold: the open-set threshold on the squared L2
            distance in use now, or None.
        open_trusted: whether the gallery's size is within what the open-set
            calibration observed.
        exception_rows: rows scanned in float32 because their 8-bit codes are
            not bounded (outliers).
        outdated_segments: segments of an older format (compaction rewrites
            them).
    """

    name: str
    dim: int
    model: str = ""
    normalize: bool = False
    live: int = 0
    deleted: int = 0
    subjects: int = 0
    segments: int = 0
    bytes_on_disk: int = 0
    memtable_rows: int = 0
    head_trained: bool = False
    open_logit_threshold: Optional[float] = None
    open_distance_threshold: Optional[float] = None
    open_trusted: bool = False
    exception_rows: int = 0
    outdated_segments: int = 0

    @classmethod
    def _from_dict(cls, d: Dict[str, Any]) -> "GalleryInfo":
        return _pick(cls, d)


@dataclass(frozen=True, eq=False)
class HeadInfo:
    """A gallery's scoring head and thresholds (:meth:`visage.Gallery.head`,
    :meth:`visage.Gallery.train_head`). Distances are SQUARED L2.

    Attributes:
        trained: whether a head is trained (False: at most the distance
            threshold is calibrated; the head's fields are zero).
        target_far: the false-accept rate the thresholds were set for.
        threshold: the 1:1 threshold as a probability (same person iff the
            calibrated probability is at least it).
        logit_threshold: the same threshold on the head's logit.
        distance_threshold: the 1:1 threshold on the squared L2 distance
            (same iff distance <= it), used without a head; 0 if not calibrated.
        auc, tar_at_far, eer: the head's area under the ROC curve,
            true-accept rate at ``target_far`` and equal error rate on
            held-out pairs.
        distance_auc, distance_tar_at_far, distance_eer: the same for plain
            distance.
        pairs: training pairs.
        heldout_genuine, heldout_impostor: held-out pairs of the calibration.
        seed: the seed of the pair sampling.
        prior: the prior P(same person) probabilities are stated at (0 when
            not calibrated).
        probability_calibrated: whether probabilities are Platt-calibrated.
        calibration_current: whether the head carries the current calibration
            format (False for a head from an older file: retrain).
        open_probes: held-out embeddings of the open-set calibration.
        current_subjects: the gallery's enrolled subjects now.
        current_open_logit_threshold, current_open_distance_threshold: the
            identification thresholds in use for ``current_subjects`` (None
            when not calibrated).
        current_open_trusted: whether ``current_subjects`` is within what the
            calibration observed.
        bias, distance_weight: the head's bias and weight of the squared distance.
        weights: float32 array, one weight per dimension (empty untrained).
    """

    trained: bool = False
    target_far: float = 0.0
    threshold: float = 0.0
    logit_threshold: float = 0.0
    distance_threshold: float = 0.0
    auc: float = 0.0
    tar_at_far: float = 0.0
    eer: float = 0.0
    distance_auc: float = 0.0
    distance_tar_at_far: float = 0.0
    distance_eer: float = 0.0
    pairs: int = 0
    heldout_genuine: int = 0
    heldout_impostor: int = 0
    seed: int = 0
    prior: float = 0.0
    probability_calibrated: bool = False
    calibration_current: bool = False
    open_probes: int = 0
    current_subjects: int = 0
    current_open_logit_threshold: Optional[float] = None
    current_open_distance_threshold: Optional[float] = None
    current_open_trusted: bool = False
    bias: float = 0.0
    distance_weight: float = 0.0
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32), repr=False)

    @classmethod
    def _from_dict(cls, d: Dict[str, Any]) -> "HeadInfo":
        d = dict(d)
        if "weights" in d:
            d["weights"] = np.asarray(d["weights"], dtype=np.float32)
        return _pick(cls, d)


@dataclass(frozen=True, eq=False)
class Identification:
    """The answer of :meth:`visage.Gallery.identify` for n probes, k
    candidates each. Distances are SQUARED L2.

    Attributes:
        known: bool [n], whether the best candidate passed the threshold.
        subject: object [n], the best candidate's subject when known, else None.
        probability: float32 [n], the best candidate's calibrated probability
            (NaN without a trained head).
        distance: float32 [n], the best candidate's squared distance (+inf
            when the gallery is empty).
        candidate_subjects: object [n, k], the k best distinct subjects.
        candidate_ids: uint64 [n, k], each one's best-matching embedding.
        candidate_distances: float32 [n, k], squared distances.
        candidate_probabilities: float32 [n, k] (NaN without a trained head).
        candidate_similarities: float32 [n, k], cosine similarity in a
            normalising gallery (NaN otherwise).

    Rows with fewer than k candidates (fewer subjects enrolled) are padded
    with subject "", id 0, distance +inf and probability NaN.
    """

    known: np.ndarray
    subject: np.ndarray
    probability: np.ndarray
    distance: np.ndarray
    candidate_subjects: np.ndarray
    candidate_ids: np.ndarray
    candidate_distances: np.ndarray
    candidate_probabilities: np.ndarray
    candidate_similarities: np.ndarray

    def __len__(self) -> int:
        return len(self.known)


@dataclass(frozen=True, eq=False)
class Verification:
    """The answer of :meth:`visage.Gallery.verify` for n pairs (deepface's
    ``verified``, ``distance``, ``threshold``). Distances are SQUARED L2.

    Attributes:
        verified: bool [n], the decision: same person.
        distance: float32 [n], squared L2 distance of a to b (to the
            best-matching embedding when b is a subject).
        threshold: float32 [n], the threshold the decision compared with,
            on the scale ``rule`` names.
        rule: object [n] of str, what was compared with ``threshold``:
            ``"distance"`` (verified iff distance <= threshold),
            ``"probability"`` (verified iff probability >= threshold) or
            ``"mean_probability"`` (a claim against a subject: the probability
            of the mean of the head's logits over the subject's images).
        probability: float32 [n], calibrated P(same person) (NaN without a
            trained head).
        similarity: float32 [n], cosine similarity 1 - distance / 2 in a
            normalising gallery (NaN otherwise).
        matched_id: uint64 [n], the enrolled embedding compared with (0 when
            b is a vector).
    """

    verified: np.ndarray
    distance: np.ndarray
    threshold: np.ndarray
    rule: np.ndarray
    probability: np.ndarray
    similarity: np.ndarray
    matched_id: np.ndarray

    def __len__(self) -> int:
        return len(self.verified)
