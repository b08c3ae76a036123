from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConflictCheck(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFLICT_CHECK_OFF: _ClassVar[ConflictCheck]
    CONFLICT_CHECK_REPORT: _ClassVar[ConflictCheck]
    CONFLICT_CHECK_REJECT: _ClassVar[ConflictCheck]

class RankBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANK_BY_DISTANCE: _ClassVar[RankBy]
    RANK_BY_HEAD: _ClassVar[RankBy]

class ScanMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCAN_MODE_EXACT: _ClassVar[ScanMode]
    SCAN_MODE_QUANTIZED: _ClassVar[ScanMode]

class VerdictRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_RULE_DISTANCE: _ClassVar[VerdictRule]
    VERDICT_RULE_PROBABILITY: _ClassVar[VerdictRule]
    VERDICT_RULE_MEAN_PROBABILITY: _ClassVar[VerdictRule]

class ClaimScore(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLAIM_SCORE_BEST: _ClassVar[ClaimScore]
    CLAIM_SCORE_MEAN: _ClassVar[ClaimScore]
CONFLICT_CHECK_OFF: ConflictCheck
CONFLICT_CHECK_REPORT: ConflictCheck
CONFLICT_CHECK_REJECT: ConflictCheck
RANK_BY_DISTANCE: RankBy
RANK_BY_HEAD: RankBy
SCAN_MODE_EXACT: ScanMode
SCAN_MODE_QUANTIZED: ScanMode
VERDICT_RULE_DISTANCE: VerdictRule
VERDICT_RULE_PROBABILITY: VerdictRule
VERDICT_RULE_MEAN_PROBABILITY: VerdictRule
CLAIM_SCORE_BEST: ClaimScore
CLAIM_SCORE_MEAN: ClaimScore

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Matrix(_message.Message):
    __slots__ = ("rows", "dim", "f32_le")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    F32_LE_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    f32_le: bytes
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., f32_le: _Optional[bytes] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("id", "subject", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: int
    subject: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[int] = ..., subject: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class CreateGalleryRequest(_message.Message):
    __slots__ = ("name", "dim", "model", "normalize", "shards", "replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    model: str
    normalize: bool
    shards: int
    replicas: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., model: _Optional[str] = ..., normalize: _Optional[bool] = ..., shards: _Optional[int] = ..., replicas: _Optional[int] = ...) -> None: ...

class DropGalleryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropGalleryResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: GalleryInfo
    def __init__(self, dropped: _Optional[_Union[GalleryInfo, _Mapping]] = ...) -> None: ...

class GetGalleryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListGalleriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSubjectsRequest(_message.Message):
    __slots__ = ("gallery", "page_size", "page_token")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    page_size: int
    page_token: str
    def __init__(self, gallery: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSubjectsResponse(_message.Message):
    __slots__ = ("subjects", "next_page_token")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[SubjectCount]
    next_page_token: str
    def __init__(self, subjects: _Optional[_Iterable[_Union[SubjectCount, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SubjectCount(_message.Message):
    __slots__ = ("subject", "embeddings")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    subject: str
    embeddings: int
    def __init__(self, subject: _Optional[str] = ..., embeddings: _Optional[int] = ...) -> None: ...

class ListGalleriesResponse(_message.Message):
    __slots__ = ("galleries",)
    GALLERIES_FIELD_NUMBER: _ClassVar[int]
    galleries: _containers.RepeatedCompositeFieldContainer[GalleryInfo]
    def __init__(self, galleries: _Optional[_Iterable[_Union[GalleryInfo, _Mapping]]] = ...) -> None: ...

class GalleryInfo(_message.Message):
    __slots__ = ("name", "dim", "live", "deleted", "subjects", "segments", "bytes_on_disk", "head_trained", "memtable_rows", "open_logit_threshold", "open_distance_threshold", "open_trusted", "model", "normalize", "exception_rows", "outdated_segments", "scans", "segment_details", "operations", "shards", "replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    HEAD_TRAINED_FIELD_NUMBER: _ClassVar[int]
    MEMTABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    OPEN_LOGIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPEN_DISTANCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPEN_TRUSTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTDATED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SCANS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_DETAILS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    live: int
    deleted: int
    subjects: int
    segments: int
    bytes_on_disk: int
    head_trained: bool
    memtable_rows: int
    open_logit_threshold: float
    open_distance_threshold: float
    open_trusted: bool
    model: str
    normalize: bool
    exception_rows: int
    outdated_segments: int
    scans: ScanCounts
    segment_details: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    operations: _containers.RepeatedCompositeFieldContainer[OperationProgress]
    shards: int
    replicas: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., live: _Optional[int] = ..., deleted: _Optional[int] = ..., subjects: _Optional[int] = ..., segments: _Optional[int] = ..., bytes_on_disk: _Optional[int] = ..., head_trained: _Optional[bool] = ..., memtable_rows: _Optional[int] = ..., open_logit_threshold: _Optional[float] = ..., open_distance_threshold: _Optional[float] = ..., open_trusted: _Optional[bool] = ..., model: _Optional[str] = ..., normalize: _Optional[bool] = ..., exception_rows: _Optional[int] = ..., outdated_segments: _Optional[int] = ..., scans: _Optional[_Union[ScanCounts, _Mapping]] = ..., segment_details: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., operations: _Optional[_Iterable[_Union[OperationProgress, _Mapping]]] = ..., shards: _Optional[int] = ..., replicas: _Optional[int] = ...) -> None: ...

class OperationProgress(_message.Message):
    __slots__ = ("kind", "rows_done", "rows_total", "bytes_done", "bytes_total", "elapsed_seconds")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    rows_done: int
    rows_total: int
    bytes_done: int
    bytes_total: int
    elapsed_seconds: float
    def __init__(self, kind: _Optional[str] = ..., rows_done: _Optional[int] = ..., rows_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("gallery", "name")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    name: str
    def __init__(self, gallery: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("name", "rows", "subjects", "files", "linked_files", "bytes", "wal_file", "wal_offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    LINKED_FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_FILE_FIELD_NUMBER: _ClassVar[int]
    WAL_OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: int
    subjects: int
    files: int
    linked_files: int
    bytes: int
    wal_file: int
    wal_offset: int
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[int] = ..., subjects: _Optional[int] = ..., files: _Optional[int] = ..., linked_files: _Optional[int] = ..., bytes: _Optional[int] = ..., wal_file: _Optional[int] = ..., wal_offset: _Optional[int] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("gallery", "vectors_path", "subjects_path", "ids_path", "replace")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    VECTORS_PATH_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_PATH_FIELD_NUMBER: _ClassVar[int]
    IDS_PATH_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    vectors_path: str
    subjects_path: str
    ids_path: str
    replace: bool
    def __init__(self, gallery: _Optional[str] = ..., vectors_path: _Optional[str] = ..., subjects_path: _Optional[str] = ..., ids_path: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("rows", "replaced", "segments", "bytes", "first_id", "subjects", "seconds")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    replaced: int
    segments: int
    bytes: int
    first_id: int
    subjects: int
    seconds: float
    def __init__(self, rows: _Optional[int] = ..., replaced: _Optional[int] = ..., segments: _Optional[int] = ..., bytes: _Optional[int] = ..., first_id: _Optional[int] = ..., subjects: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("name", "gallery")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    name: str
    gallery: str
    def __init__(self, name: _Optional[str] = ..., gallery: _Optional[str] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("gallery", "source_gallery", "erasures_applied", "rows_erased")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_GALLERY_FIELD_NUMBER: _ClassVar[int]
    ERASURES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    ROWS_ERASED_FIELD_NUMBER: _ClassVar[int]
    gallery: GalleryInfo
    source_gallery: str
    erasures_applied: int
    rows_erased: int
    def __init__(self, gallery: _Optional[_Union[GalleryInfo, _Mapping]] = ..., source_gallery: _Optional[str] = ..., erasures_applied: _Optional[int] = ..., rows_erased: _Optional[int] = ...) -> None: ...

class ScanCounts(_message.Message):
    __slots__ = ("first_pass", "widened", "f32_batch", "direct")
    FIRST_PASS_FIELD_NUMBER: _ClassVar[int]
    WIDENED_FIELD_NUMBER: _ClassVar[int]
    F32_BATCH_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    first_pass: int
    widened: int
    f32_batch: int
    direct: int
    def __init__(self, first_pass: _Optional[int] = ..., widened: _Optional[int] = ..., f32_batch: _Optional[int] = ..., direct: _Optional[int] = ...) -> None: ...

class SegmentInfo(_message.Message):
    __slots__ = ("file_no", "rows", "deleted", "exceptions", "format_version")
    FILE_NO_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    EXCEPTIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    file_no: int
    rows: int
    deleted: int
    exceptions: int
    format_version: int
    def __init__(self, file_no: _Optional[int] = ..., rows: _Optional[int] = ..., deleted: _Optional[int] = ..., exceptions: _Optional[int] = ..., format_version: _Optional[int] = ...) -> None: ...

class InsertRequest(_message.Message):
    __slots__ = ("gallery", "embeddings", "model", "matrix", "ids", "subjects", "conflict_check")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_CHECK_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    model: str
    matrix: Matrix
    ids: _containers.RepeatedScalarFieldContainer[int]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    conflict_check: ConflictCheck
    def __init__(self, gallery: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., model: _Optional[str] = ..., matrix: _Optional[_Union[Matrix, _Mapping]] = ..., ids: _Optional[_Iterable[int]] = ..., subjects: _Optional[_Iterable[str]] = ..., conflict_check: _Optional[_Union[ConflictCheck, str]] = ...) -> None: ...

class Conflict(_message.Message):
    __slots__ = ("position", "subject", "other_subject", "other_id", "other_position", "distance", "probability")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    OTHER_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    OTHER_ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_POSITION_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    position: int
    subject: str
    other_subject: str
    other_id: int
    other_position: int
    distance: float
    probability: float
    def __init__(self, position: _Optional[int] = ..., subject: _Optional[str] = ..., other_subject: _Optional[str] = ..., other_id: _Optional[int] = ..., other_position: _Optional[int] = ..., distance: _Optional[float] = ..., probability: _Optional[float] = ...) -> None: ...

class InsertResponse(_message.Message):
    __slots__ = ("inserted", "replaced", "batches", "ids", "conflicts", "seq")
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    inserted: int
    replaced: int
    batches: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    conflicts: _containers.RepeatedCompositeFieldContainer[Conflict]
    seq: int
    def __init__(self, inserted: _Optional[int] = ..., replaced: _Optional[int] = ..., batches: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ..., conflicts: _Optional[_Iterable[_Union[Conflict, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("gallery", "ids", "subjects")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gallery: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., subjects: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "seq")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    seq: int
    def __init__(self, deleted: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("gallery", "ids", "min_seq")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    min_seq: int
    def __init__(self, gallery: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., min_seq: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("gallery", "batch_rows")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    batch_rows: int
    def __init__(self, gallery: _Optional[str] = ..., batch_rows: _Optional[int] = ...) -> None: ...

class ExportBatch(_message.Message):
    __slots__ = ("matrix", "ids", "subjects")
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    matrix: Matrix
    ids: _containers.RepeatedScalarFieldContainer[int]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, matrix: _Optional[_Union[Matrix, _Mapping]] = ..., ids: _Optional[_Iterable[int]] = ..., subjects: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("embeddings",)
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("gallery", "queries", "k", "rank_by", "max_distance", "mode", "model", "matrix", "with_subjects", "min_seq")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RANK_BY_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    WITH_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    queries: _containers.RepeatedCompositeFieldContainer[Vector]
    k: int
    rank_by: RankBy
    max_distance: float
    mode: ScanMode
    model: str
    matrix: Matrix
    with_subjects: bool
    min_seq: int
    def __init__(self, gallery: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., k: _Optional[int] = ..., rank_by: _Optional[_Union[RankBy, str]] = ..., max_distance: _Optional[float] = ..., mode: _Optional[_Union[ScanMode, str]] = ..., model: _Optional[str] = ..., matrix: _Optional[_Union[Matrix, _Mapping]] = ..., with_subjects: _Optional[bool] = ..., min_seq: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "k", "counts", "ids", "distances", "subjects", "probabilities", "similarities")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SIMILARITIES_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    k: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    distances: _containers.RepeatedScalarFieldContainer[float]
    subjects: _containers.RepeatedScalarFieldContainer[str]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    similarities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., k: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ..., ids: _Optional[_Iterable[int]] = ..., distances: _Optional[_Iterable[float]] = ..., subjects: _Optional[_Iterable[str]] = ..., probabilities: _Optional[_Iterable[float]] = ..., similarities: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "subject", "distance", "probability", "similarity", "rank_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    RANK_KEY_FIELD_NUMBER: _ClassVar[int]
    id: int
    subject: str
    distance: float
    probability: float
    similarity: float
    rank_key: float
    def __init__(self, id: _Optional[int] = ..., subject: _Optional[str] = ..., distance: _Optional[float] = ..., probability: _Optional[float] = ..., similarity: _Optional[float] = ..., rank_key: _Optional[float] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("gallery", "probes", "k", "min_probability", "max_distance", "model", "matrix", "min_seq")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MIN_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    probes: _containers.RepeatedCompositeFieldContainer[Vector]
    k: int
    min_probability: float
    max_distance: float
    model: str
    matrix: Matrix
    min_seq: int
    def __init__(self, gallery: _Optional[str] = ..., probes: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., k: _Optional[int] = ..., min_probability: _Optional[float] = ..., max_distance: _Optional[float] = ..., model: _Optional[str] = ..., matrix: _Optional[_Union[Matrix, _Mapping]] = ..., min_seq: _Optional[int] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Identification]
    def __init__(self, results: _Optional[_Iterable[_Union[Identification, _Mapping]]] = ...) -> None: ...

class Identification(_message.Message):
    __slots__ = ("known", "subject", "candidates")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    known: bool
    subject: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, known: _Optional[bool] = ..., subject: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("subject", "id", "distance", "probability", "similarity", "rank_key")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    RANK_KEY_FIELD_NUMBER: _ClassVar[int]
    subject: str
    id: int
    distance: float
    probability: float
    similarity: float
    rank_key: float
    def __init__(self, subject: _Optional[str] = ..., id: _Optional[int] = ..., distance: _Optional[float] = ..., probability: _Optional[float] = ..., similarity: _Optional[float] = ..., rank_key: _Optional[float] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("gallery", "pairs", "max_distance", "min_probability", "model", "matrix", "b_matrix", "b_ids", "b_subjects", "min_seq")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MIN_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    B_MATRIX_FIELD_NUMBER: _ClassVar[int]
    B_IDS_FIELD_NUMBER: _ClassVar[int]
    B_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    pairs: _containers.RepeatedCompositeFieldContainer[VerifyPair]
    max_distance: float
    min_probability: float
    model: str
    matrix: Matrix
    b_matrix: Matrix
    b_ids: _containers.RepeatedScalarFieldContainer[int]
    b_subjects: _containers.RepeatedScalarFieldContainer[str]
    min_seq: int
    def __init__(self, gallery: _Optional[str] = ..., pairs: _Optional[_Iterable[_Union[VerifyPair, _Mapping]]] = ..., max_distance: _Optional[float] = ..., min_probability: _Optional[float] = ..., model: _Optional[str] = ..., matrix: _Optional[_Union[Matrix, _Mapping]] = ..., b_matrix: _Optional[_Union[Matrix, _Mapping]] = ..., b_ids: _Optional[_Iterable[int]] = ..., b_subjects: _Optional[_Iterable[str]] = ..., min_seq: _Optional[int] = ...) -> None: ...

class VerifyPair(_message.Message):
    __slots__ = ("a", "vector", "id", "subject")
    A_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    a: Vector
    vector: Vector
    id: int
    subject: str
    def __init__(self, a: _Optional[_Union[Vector, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., id: _Optional[int] = ..., subject: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("verdicts",)
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("same", "probability", "distance", "matched_id", "similarity", "rule", "threshold")
    SAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    same: bool
    probability: float
    distance: float
    matched_id: int
    similarity: float
    rule: VerdictRule
    threshold: float
    def __init__(self, same: _Optional[bool] = ..., probability: _Optional[float] = ..., distance: _Optional[float] = ..., matched_id: _Optional[int] = ..., similarity: _Optional[float] = ..., rule: _Optional[_Union[VerdictRule, str]] = ..., threshold: _Optional[float] = ...) -> None: ...

class TrainHeadRequest(_message.Message):
    __slots__ = ("gallery", "target_far", "max_pairs", "seed", "prior")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FAR_FIELD_NUMBER: _ClassVar[int]
    MAX_PAIRS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    target_far: float
    max_pairs: int
    seed: int
    prior: float
    def __init__(self, gallery: _Optional[str] = ..., target_far: _Optional[float] = ..., max_pairs: _Optional[int] = ..., seed: _Optional[int] = ..., prior: _Optional[float] = ...) -> None: ...

class GetHeadRequest(_message.Message):
    __slots__ = ("gallery",)
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    def __init__(self, gallery: _Optional[str] = ...) -> None: ...

class HeadInfo(_message.Message):
    __slots__ = ("trained", "weights", "bias", "threshold", "target_far", "auc", "tar_at_far", "pairs", "eer", "distance_threshold", "distance_auc", "distance_tar_at_far", "distance_eer", "heldout_genuine", "heldout_impostor", "seed", "distance_weight", "logit_threshold", "open_logit_threshold", "open_distance_threshold", "open_tar", "open_distance_tar", "open_probes", "calibration_current", "prior", "probability_calibrated", "platt_a", "platt_b", "claim_score", "claim_logit_thresholds", "claim_distance_thresholds", "claim_images", "claim_tar", "claim_tar_other", "claim_distance_tar", "open_head_model", "open_distance_model", "det_head", "det_distance", "op_head", "op_distance", "current_subjects", "current_open_logit_threshold", "current_open_distance_threshold", "current_open_trusted")
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FAR_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    TAR_AT_FAR_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    EER_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_AUC_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_TAR_AT_FAR_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_EER_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_GENUINE_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_IMPOSTOR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LOGIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPEN_LOGIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPEN_DISTANCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OPEN_TAR_FIELD_NUMBER: _ClassVar[int]
    OPEN_DISTANCE_TAR_FIELD_NUMBER: _ClassVar[int]
    OPEN_PROBES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_CURRENT_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    PLATT_A_FIELD_NUMBER: _ClassVar[int]
    PLATT_B_FIELD_NUMBER: _ClassVar[int]
    CLAIM_SCORE_FIELD_NUMBER: _ClassVar[int]
    CLAIM_LOGIT_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    CLAIM_DISTANCE_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    CLAIM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLAIM_TAR_FIELD_NUMBER: _ClassVar[int]
    CLAIM_TAR_OTHER_FIELD_NUMBER: _ClassVar[int]
    CLAIM_DISTANCE_TAR_FIELD_NUMBER: _ClassVar[int]
    OPEN_HEAD_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPEN_DISTANCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DET_HEAD_FIELD_NUMBER: _ClassVar[int]
    DET_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    OP_HEAD_FIELD_NUMBER: _ClassVar[int]
    OP_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_OPEN_LOGIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CURRENT_OPEN_DISTANCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CURRENT_OPEN_TRUSTED_FIELD_NUMBER: _ClassVar[int]
    trained: bool
    weights: _containers.RepeatedScalarFieldContainer[float]
    bias: float
    threshold: float
    target_far: float
    auc: float
    tar_at_far: float
    pairs: int
    eer: float
    distance_threshold: float
    distance_auc: float
    distance_tar_at_far: float
    distance_eer: float
    heldout_genuine: int
    heldout_impostor: int
    seed: int
    distance_weight: float
    logit_threshold: float
    open_logit_threshold: float
    open_distance_threshold: float
    open_tar: float
    open_distance_tar: float
    open_probes: int
    calibration_current: bool
    prior: float
    probability_calibrated: bool
    platt_a: float
    platt_b: float
    claim_score: ClaimScore
    claim_logit_thresholds: _containers.RepeatedScalarFieldContainer[float]
    claim_distance_thresholds: _containers.RepeatedScalarFieldContainer[float]
    claim_images: int
    claim_tar: float
    claim_tar_other: float
    claim_distance_tar: float
    open_head_model: OpenSetModel
    open_distance_model: OpenSetModel
    det_head: _containers.RepeatedCompositeFieldContainer[DetPoint]
    det_distance: _containers.RepeatedCompositeFieldContainer[DetPoint]
    op_head: DetPoint
    op_distance: DetPoint
    current_subjects: int
    current_open_logit_threshold: float
    current_open_distance_threshold: float
    current_open_trusted: bool
    def __init__(self, trained: _Optional[bool] = ..., weights: _Optional[_Iterable[float]] = ..., bias: _Optional[float] = ..., threshold: _Optional[float] = ..., target_far: _Optional[float] = ..., auc: _Optional[float] = ..., tar_at_far: _Optional[float] = ..., pairs: _Optional[int] = ..., eer: _Optional[float] = ..., distance_threshold: _Optional[float] = ..., distance_auc: _Optional[float] = ..., distance_tar_at_far: _Optional[float] = ..., distance_eer: _Optional[float] = ..., heldout_genuine: _Optional[int] = ..., heldout_impostor: _Optional[int] = ..., seed: _Optional[int] = ..., distance_weight: _Optional[float] = ..., logit_threshold: _Optional[float] = ..., open_logit_threshold: _Optional[float] = ..., open_distance_threshold: _Optional[float] = ..., open_tar: _Optional[float] = ..., open_distance_tar: _Optional[float] = ..., open_probes: _Optional[int] = ..., calibration_current: _Optional[bool] = ..., prior: _Optional[float] = ..., probability_calibrated: _Optional[bool] = ..., platt_a: _Optional[float] = ..., platt_b: _Optional[float] = ..., claim_score: _Optional[_Union[ClaimScore, str]] = ..., claim_logit_thresholds: _Optional[_Iterable[float]] = ..., claim_distance_thresholds: _Optional[_Iterable[float]] = ..., claim_images: _Optional[int] = ..., claim_tar: _Optional[float] = ..., claim_tar_other: _Optional[float] = ..., claim_distance_tar: _Optional[float] = ..., open_head_model: _Optional[_Union[OpenSetModel, _Mapping]] = ..., open_distance_model: _Optional[_Union[OpenSetModel, _Mapping]] = ..., det_head: _Optional[_Iterable[_Union[DetPoint, _Mapping]]] = ..., det_distance: _Optional[_Iterable[_Union[DetPoint, _Mapping]]] = ..., op_head: _Optional[_Union[DetPoint, _Mapping]] = ..., op_distance: _Optional[_Union[DetPoint, _Mapping]] = ..., current_subjects: _Optional[int] = ..., current_open_logit_threshold: _Optional[float] = ..., current_open_distance_threshold: _Optional[float] = ..., current_open_trusted: _Optional[bool] = ...) -> None: ...

class DetPoint(_message.Message):
    __slots__ = ("far", "frr")
    FAR_FIELD_NUMBER: _ClassVar[int]
    FRR_FIELD_NUMBER: _ClassVar[int]
    far: float
    frr: float
    def __init__(self, far: _Optional[float] = ..., frr: _Optional[float] = ...) -> None: ...

class OpenSetModel(_message.Message):
    __slots__ = ("subjects", "trusted_up_to", "points")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_UP_TO_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    subjects: int
    trusted_up_to: int
    points: _containers.RepeatedCompositeFieldContainer[OpenPoint]
    def __init__(self, subjects: _Optional[int] = ..., trusted_up_to: _Optional[int] = ..., points: _Optional[_Iterable[_Union[OpenPoint, _Mapping]]] = ...) -> None: ...

class OpenPoint(_message.Message):
    __slots__ = ("subjects", "threshold", "fpir_fixed")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FPIR_FIXED_FIELD_NUMBER: _ClassVar[int]
    subjects: int
    threshold: float
    fpir_fixed: float
    def __init__(self, subjects: _Optional[int] = ..., threshold: _Optional[float] = ..., fpir_fixed: _Optional[float] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("gallery",)
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    def __init__(self, gallery: _Optional[str] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("gallery",)
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    def __init__(self, gallery: _Optional[str] = ...) -> None: ...

class GalleryStats(_message.Message):
    __slots__ = ("live", "deleted", "subjects", "segments", "memtable_rows", "bytes_on_disk")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MEMTABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_ON_DISK_FIELD_NUMBER: _ClassVar[int]
    live: int
    deleted: int
    subjects: int
    segments: int
    memtable_rows: int
    bytes_on_disk: int
    def __init__(self, live: _Optional[int] = ..., deleted: _Optional[int] = ..., subjects: _Optional[int] = ..., segments: _Optional[int] = ..., memtable_rows: _Optional[int] = ..., bytes_on_disk: _Optional[int] = ...) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("before", "after")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    before: GalleryStats
    after: GalleryStats
    def __init__(self, before: _Optional[_Union[GalleryStats, _Mapping]] = ..., after: _Optional[_Union[GalleryStats, _Mapping]] = ...) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("before", "after")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    before: GalleryStats
    after: GalleryStats
    def __init__(self, before: _Optional[_Union[GalleryStats, _Mapping]] = ..., after: _Optional[_Union[GalleryStats, _Mapping]] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("node_id", "nodes", "galleries")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    GALLERIES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[ClusterNode]
    galleries: _containers.RepeatedCompositeFieldContainer[ClusterGallery]
    def __init__(self, node_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[ClusterNode, _Mapping]]] = ..., galleries: _Optional[_Iterable[_Union[ClusterGallery, _Mapping]]] = ...) -> None: ...

class ClusterNode(_message.Message):
    __slots__ = ("id", "advertise")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    id: str
    advertise: str
    def __init__(self, id: _Optional[str] = ..., advertise: _Optional[str] = ...) -> None: ...

class ClusterGallery(_message.Message):
    __slots__ = ("name", "shards", "log_first_seq", "log_last_seq", "replicas", "erasures")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LOG_LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ERASURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    shards: int
    log_first_seq: int
    log_last_seq: int
    replicas: _containers.RepeatedCompositeFieldContainer[ShardReplica]
    erasures: _containers.RepeatedCompositeFieldContainer[ErasureStatus]
    def __init__(self, name: _Optional[str] = ..., shards: _Optional[int] = ..., log_first_seq: _Optional[int] = ..., log_last_seq: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ShardReplica, _Mapping]]] = ..., erasures: _Optional[_Iterable[_Union[ErasureStatus, _Mapping]]] = ...) -> None: ...

class ErasureStatus(_message.Message):
    __slots__ = ("seq", "subjects", "ids", "state", "waiting_for", "messages_erased")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_ERASED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    subjects: int
    ids: int
    state: str
    waiting_for: _containers.RepeatedScalarFieldContainer[str]
    messages_erased: int
    def __init__(self, seq: _Optional[int] = ..., subjects: _Optional[int] = ..., ids: _Optional[int] = ..., state: _Optional[str] = ..., waiting_for: _Optional[_Iterable[str]] = ..., messages_erased: _Optional[int] = ...) -> None: ...

class ShardReplica(_message.Message):
    __slots__ = ("shard", "node_id", "live", "applied_seq", "flushed_seq", "lag")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    FLUSHED_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    shard: int
    node_id: str
    live: bool
    applied_seq: int
    flushed_seq: int
    lag: int
    def __init__(self, shard: _Optional[int] = ..., node_id: _Optional[str] = ..., live: _Optional[bool] = ..., applied_seq: _Optional[int] = ..., flushed_seq: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class CopyShardRequest(_message.Message):
    __slots__ = ("gallery", "shard")
    GALLERY_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    gallery: str
    shard: int
    def __init__(self, gallery: _Optional[str] = ..., shard: _Optional[int] = ...) -> None: ...

class ShardFileChunk(_message.Message):
    __slots__ = ("path", "offset", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    data: bytes
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
