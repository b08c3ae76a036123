"""The remote backend: a gRPC client of visage-server, in pure Python on
grpcio, with the same methods as ``visage._native.Engine`` (see ``_api.py``).

Vectors travel in the proto's packed forms: a ``Matrix`` of little-endian
float32 bytes (``ndarray.tobytes``) for Insert, Search, Identify and Verify,
and Search's flat response arrays; never a message per vector.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from . import errors
from .v1 import visage_pb2 as pb
from .v1 import visage_pb2_grpc as pb_grpc

_RULES = {
    pb.VERDICT_RULE_DISTANCE: "distance",
    pb.VERDICT_RULE_PROBABILITY: "probability",
    pb.VERDICT_RULE_MEAN_PROBABILITY: "mean_probability",
}


def _error(e: grpc.RpcError) -> errors.Error:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    name = code.name if code is not None else "UNKNOWN"
    return errors._from_code(name, details or "")


def _matrix(x: np.ndarray) -> "pb.Matrix":
    rows, dim = x.shape
    return pb.Matrix(rows=rows, dim=dim, f32_le=x.astype("<f4", copy=False).tobytes())


def _opt(msg: Any, field: str) -> Optional[float]:
    return getattr(msg, field) if msg.HasField(field) else None


def _info(g: "pb.GalleryInfo") -> Dict[str, Any]:
    return {
        "name": g.name,
        "dim": g.dim,
        "model": g.model,
        "normalize": g.normalize,
        "live": g.live,
        "deleted": g.deleted,
        "subjects": g.subjects,
        "segments": g.segments,
        "bytes_on_disk": g.bytes_on_disk,
        "memtable_rows": g.memtable_rows,
        "head_trained": g.head_trained,
        "open_logit_threshold": _opt(g, "open_logit_threshold"),
        "open_distance_threshold": _opt(g, "open_distance_threshold"),
        "open_trusted": g.open_trusted,
        "exception_rows": g.exception_rows,
        "outdated_segments": g.outdated_segments,
    }


_HEAD_FIELDS = (
    "trained", "bias", "distance_weight", "threshold", "logit_threshold", "target_far",
    "auc", "tar_at_far", "eer", "pairs", "distance_threshold", "distance_auc",
    "distance_tar_at_far", "distance_eer", "heldout_genuine", "heldout_impostor", "seed",
    "open_probes", "calibration_current", "prior", "probability_calibrated",
    "current_subjects", "current_open_trusted",
)


def _head(h: "pb.HeadInfo") -> Dict[str, Any]:
    d: Dict[str, Any] = {f: getattr(h, f) for f in _HEAD_FIELDS}
    d["weights"] = np.array(h.weights, dtype=np.float32)
    d["current_open_logit_threshold"] = _opt(h, "current_open_logit_threshold")
    d["current_open_distance_threshold"] = _opt(h, "current_open_distance_threshold")
    return d


# ---------------------------------------------------------------- wire
#
# Search's flat response and Get's embeddings are decoded from the wire
# bytes with numpy (np.frombuffer for the packed floats, a vectorised decode
# for the packed varints) instead of through protobuf's repeated fields,
# which hand out one Python object per value.


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    """The varint at ``buf[i]``, and the position after it."""
    result = 0
    shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("malformed varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes, start: int = 0, end: Optional[int] = None):
    """Yield ``(field number, wire type, value)`` of a message's bytes: an
    int for varints, ``(start, end)`` offsets for length-delimited fields and
    fixed-width ones."""
    i = start
    end = len(buf) if end is None else end
    while i < end:
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield field, wire, v
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("field runs past the message")
            yield field, wire, (i, i + n)
            i += n
        elif wire == 5:
            yield field, wire, (i, i + 4)
            i += 4
        elif wire == 1:
            yield field, wire, (i, i + 8)
            i += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if i != end:
        raise ValueError("message cut short")


def _packed_varints(chunk: bytes) -> np.ndarray:
    """Packed varints as uint64, decoded with numpy."""
    b = np.frombuffer(chunk, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if b[-1] & 0x80:
        raise ValueError("packed varints cut short")
    if not (b & 0x80).any():
        return b.astype(np.uint64)
    ends = np.flatnonzero(b < 0x80)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise ValueError("varint longer than 10 bytes")
    pos = np.arange(b.size) - np.repeat(starts, lengths)
    parts = (b & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    # The parts of one varint hold disjoint bits: their sum is their OR.
    return np.add.reduceat(parts, starts)


def _floats(chunk: bytes) -> np.ndarray:
    if len(chunk) % 4:
        raise ValueError("packed floats of a length not a multiple of 4")
    return np.frombuffer(chunk, dtype="<f4").astype(np.float32)


class _Flat:
    """SearchResponse's flat form, as numpy arrays."""

    def __init__(self, buf: bytes) -> None:
        self.k = 0
        varints: Dict[int, List[np.ndarray]] = {3: [], 4: []}
        floats: Dict[int, List[np.ndarray]] = {5: [], 7: [], 8: []}
        self.subjects: List[str] = []
        self.results = 0
        for field, wire, v in _fields(buf):
            if field == 2 and wire == 0:
                self.k = v
            elif field in varints and wire == 2:
                varints[field].append(_packed_varints(buf[v[0]:v[1]]))
            elif field in varints and wire == 0:
                varints[field].append(np.array([v], dtype=np.uint64))
            elif field in floats and wire == 2:
                floats[field].append(_floats(buf[v[0]:v[1]]))
            elif field in floats and wire == 5:
                floats[field].append(_floats(buf[v[0]:v[1]]))
            elif field == 6 and wire == 2:
                self.subjects.append(buf[v[0]:v[1]].decode("utf-8"))
            elif field == 1:
                self.results += 1
        def cat(parts: List[np.ndarray], dtype: Any) -> np.ndarray:
            if not parts:
                return np.zeros(0, dtype=dtype)
            return np.concatenate(parts) if len(parts) > 1 else parts[0]

        self.counts = cat(varints[3], np.uint64)
        self.ids = cat(varints[4], np.uint64)
        self.distances = cat(floats[5], np.float32)
        self.probabilities = cat(floats[7], np.float32)
        self.similarities = cat(floats[8], np.float32)


def _embeddings(buf: bytes, dim: int) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """GetResponse's embeddings: (vectors [m, dim], subjects, ids)."""
    ids: List[int] = []
    subjects: List[str] = []
    vectors: List[np.ndarray] = []
    for field, wire, (a, z) in ((f, w, v) for f, w, v in _fields(buf) if f == 1 and w == 2):
        id_, subject, parts = 0, "", []
        for f, w, v in _fields(buf, a, z):
            if f == 1 and w == 0:
                id_ = v
            elif f == 2 and w == 2:
                subject = buf[v[0]:v[1]].decode("utf-8")
            elif f == 3 and w == 2:
                parts.append(_floats(buf[v[0]:v[1]]))
            elif f == 3 and w == 5:
                parts.append(_floats(buf[v[0]:v[1]]))
        vec = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        if vec.size != dim:
            raise ValueError(f"an embedding of {vec.size} values in a gallery of {dim}")
        ids.append(id_)
        subjects.append(subject)
        vectors.append(vec)
    if not vectors:
        return np.zeros((0, dim), dtype=np.float32), [], np.zeros(0, dtype=np.uint64)
    return np.stack(vectors), subjects, np.array(ids, dtype=np.uint64)


class _Future:
    """An Insert in flight: ``result()`` gives the rows' ids or raises the
    visage error."""

    def __init__(self, call: Any, ids: Optional[np.ndarray], rows: int) -> None:
        self._call = call
        self._ids = ids
        self._rows = rows

    def done(self) -> bool:
        return bool(self._call.done())

    def result(self) -> np.ndarray:
        try:
            resp = self._call.result()
        except grpc.RpcError as e:
            raise _error(e) from None
        if self._ids is not None:
            return self._ids.copy()
        ids = np.array(resp.ids, dtype=np.uint64)
        if len(ids) != self._rows:
            raise errors.Internal(
                f"the server assigned {len(ids)} ids to {self._rows} rows "
                f"(a server without assigned ids in InsertResponse.ids?)"
            )
        return ids


class Remote:
    """A channel to one server, with the API key, CA and deadline of
    :func:`visage.connect`."""

    # Insert requests kept in flight by Gallery.add.
    pipeline = 3
    # Default batches of Gallery.add: about this many bytes a request (well
    # under the server's 64 MiB message limit, and several requests to
    # overlap for a large add).
    request_bytes = 16 << 20

    def __init__(
        self,
        address: str,
        api_key: Optional[str] = None,
        tls_ca: Optional[Union[str, bytes, "os.PathLike[str]"]] = None,
        timeout: Optional[float] = None,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise TypeError("address must be a non-empty str such as 'localhost:50051'")
        secure = tls_ca is not None
        target = address
        if target.startswith("https://"):
            target, secure = target[len("https://"):], True
        elif target.startswith("http://"):
            target = target[len("http://"):]
            if tls_ca is not None:
                raise errors.InvalidArgument("tls_ca given for an http:// address")
        target = target.rstrip("/")
        self.target = target
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ]
        if secure:
            pem = None
            if isinstance(tls_ca, bytes):
                pem = tls_ca
            elif tls_ca is not None:
                with open(os.fspath(tls_ca), "rb") as f:
                    pem = f.read()
            creds = grpc.ssl_channel_credentials(root_certificates=pem)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError("api_key must be a str")
        self._metadata: Optional[List[Tuple[str, str]]] = (
            [("authorization", f"Bearer {api_key}")] if api_key else None
        )
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise errors.InvalidArgument(f"timeout must be a number of seconds > 0, got {timeout}")
        self._timeout = timeout
        self._stub = pb_grpc.VisageStub(self._channel)
        # Search and Get with their answers decoded by numpy (see _Flat).
        self._search_flat = self._channel.unary_unary(
            "/visage.v1.Visage/Search",
            request_serializer=pb.SearchRequest.SerializeToString,
            response_deserializer=_Flat,
        )
        self._get_raw = self._channel.unary_unary(
            "/visage.v1.Visage/Get",
            request_serializer=pb.GetRequest.SerializeToString,
            response_deserializer=lambda b: b,
        )

    def _call(self, method: Any, request: Any) -> Any:
        call = getattr(self._stub, method) if isinstance(method, str) else method
        try:
            return call(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as e:
            raise _error(e) from None

    def close(self) -> None:
        self._channel.close()

    # --- galleries

    def create_gallery(self, name: str, dim: int, model: str, normalize: bool) -> Dict[str, Any]:
        req = pb.CreateGalleryRequest(name=name, dim=dim, model=model, normalize=normalize)
        return _info(self._call("CreateGallery", req))

    def gallery_info(self, name: str) -> Dict[str, Any]:
        return _info(self._call("GetGallery", pb.GetGalleryRequest(name=name)))

    def list_galleries(self) -> List[Dict[str, Any]]:
        resp = self._call("ListGalleries", pb.ListGalleriesRequest())
        return [_info(g) for g in resp.galleries]

    def drop_gallery(self, name: str) -> None:
        self._call("DropGallery", pb.DropGalleryRequest(name=name))

    # --- writes

    def insert_async(
        self,
        name: str,
        vectors: np.ndarray,
        subjects: Sequence[str],
        ids: Optional[np.ndarray],
    ) -> _Future:
        rows = vectors.shape[0]
        subj = list(subjects) if len(subjects) == rows else list(subjects) * rows
        req = pb.InsertRequest(gallery=name, matrix=_matrix(vectors), subjects=subj)
        if ids is not None:
            req.ids.extend(ids.tolist())
        try:
            call = self._stub.Insert.future(req, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as e:
            raise _error(e) from None
        return _Future(call, ids, rows)

    def insert(
        self, name: str, vectors: np.ndarray, subjects: Sequence[str], ids: Optional[np.ndarray]
    ) -> np.ndarray:
        return self.insert_async(name, vectors, subjects, ids).result()

    def delete(self, name: str, ids: np.ndarray, subjects: List[str]) -> int:
        req = pb.DeleteRequest(gallery=name, ids=ids.tolist(), subjects=subjects)
        return int(self._call("Delete", req).deleted)

    def compact(self, name: str) -> None:
        self._call("Compact", pb.CompactRequest(gallery=name))

    def flush(self, name: str) -> None:
        self._call("Flush", pb.FlushRequest(gallery=name))

    def train_head(
        self,
        name: str,
        target_far: float,
        max_pairs: Optional[int],
        seed: Optional[int],
        prior: Optional[float],
    ) -> Dict[str, Any]:
        req = pb.TrainHeadRequest(gallery=name, target_far=target_far, max_pairs=max_pairs or 0)
        if seed is not None:
            req.seed = seed
        if prior is not None:
            req.prior = prior
        return _head(self._call("TrainHead", req))

    def head(self, name: str) -> Dict[str, Any]:
        return _head(self._call("GetHead", pb.GetHeadRequest(gallery=name)))

    # --- reads

    def get(
        self, name: str, ids: np.ndarray, dim: int
    ) -> Tuple[np.ndarray, List[str], np.ndarray]:
        raw = self._call(self._get_raw, pb.GetRequest(gallery=name, ids=ids.tolist()))
        return _embeddings(raw, dim)

    def search(
        self,
        name: str,
        probes: np.ndarray,
        k: int,
        max_distance: Optional[float],
        with_subjects: bool,
        exact: bool,
    ) -> Tuple[np.ndarray, np.ndarray, Optional[List[str]], np.ndarray, np.ndarray]:
        n = probes.shape[0]
        req = pb.SearchRequest(
            gallery=name,
            matrix=_matrix(probes),
            k=k,
            with_subjects=with_subjects,
            mode=pb.SCAN_MODE_EXACT if exact else pb.SCAN_MODE_QUANTIZED,
        )
        if max_distance is not None:
            req.max_distance = max_distance
        r = self._call(self._search_flat, req)
        slots = n * k
        if r.results or len(r.ids) != slots or len(r.distances) != slots:
            raise errors.Internal(
                f"the server answered a packed search of {n} queries, k = {k} with "
                f"{len(r.ids)} ids and {len(r.distances)} distances (a server without "
                f"the packed Search?)"
            )
        ids = r.ids.reshape(n, k)
        dist = r.distances.reshape(n, k)
        nan = np.full((n, k), np.nan, dtype=np.float32)
        prob = r.probabilities.reshape(n, k) if len(r.probabilities) == slots else nan
        sim = r.similarities.reshape(n, k) if len(r.similarities) == slots else nan.copy()
        if with_subjects and len(r.subjects) != slots:
            raise errors.Internal(f"{len(r.subjects)} subjects for {slots} slots")
        return ids, dist, (r.subjects if with_subjects else None), prob, sim

    def identify(
        self,
        name: str,
        probes: np.ndarray,
        k: int,
        min_probability: Optional[float],
        max_distance: Optional[float],
    ) -> Tuple[Any, ...]:
        n = probes.shape[0]
        req = pb.IdentifyRequest(gallery=name, matrix=_matrix(probes), k=k)
        if min_probability is not None:
            req.min_probability = min_probability
        if max_distance is not None:
            req.max_distance = max_distance
        r = self._call("Identify", req)
        known = np.zeros(n, dtype=np.bool_)
        subject: List[Optional[str]] = [None] * n
        cs = [""] * (n * k)
        ids = np.zeros((n, k), dtype=np.uint64)
        dist = np.full((n, k), np.inf, dtype=np.float32)
        prob = np.full((n, k), np.nan, dtype=np.float32)
        sim = np.full((n, k), np.nan, dtype=np.float32)
        for q, res in enumerate(r.results):
            known[q] = res.known
            if res.known:
                subject[q] = res.subject
            for j, c in enumerate(res.candidates[:k]):
                cs[q * k + j] = c.subject
                ids[q, j] = c.id
                dist[q, j] = c.distance
                if c.HasField("probability"):
                    prob[q, j] = c.probability
                if c.HasField("similarity"):
                    sim[q, j] = c.similarity
        return known, subject, cs, ids, dist, prob, sim

    def verify(
        self,
        name: str,
        a: np.ndarray,
        b_vectors: Optional[np.ndarray],
        b_ids: Optional[np.ndarray],
        b_subjects: Optional[List[str]],
        max_distance: Optional[float],
        min_probability: Optional[float],
    ) -> Tuple[Any, ...]:
        n = a.shape[0]
        req = pb.VerifyRequest(gallery=name, matrix=_matrix(a))
        if b_vectors is not None:
            req.b_matrix.CopyFrom(_matrix(b_vectors))
        elif b_ids is not None:
            req.b_ids.extend(b_ids.tolist())
        else:
            req.b_subjects.extend(b_subjects or [])
        if max_distance is not None:
            req.max_distance = max_distance
        if min_probability is not None:
            req.min_probability = min_probability
        vs = self._call("Verify", req).verdicts
        same = np.zeros(n, dtype=np.bool_)
        distance = np.zeros(n, dtype=np.float32)
        threshold = np.zeros(n, dtype=np.float32)
        rule: List[str] = [""] * n
        prob = np.full(n, np.nan, dtype=np.float32)
        sim = np.full(n, np.nan, dtype=np.float32)
        matched = np.zeros(n, dtype=np.uint64)
        for i, v in enumerate(vs):
            same[i] = v.same
            distance[i] = v.distance
            threshold[i] = v.threshold
            rule[i] = _RULES.get(v.rule, str(v.rule))
            if v.HasField("probability"):
                prob[i] = v.probability
            if v.HasField("similarity"):
                sim[i] = v.similarity
            if v.HasField("matched_id"):
                matched[i] = v.matched_id
        return same, distance, threshold, rule, prob, sim, matched
