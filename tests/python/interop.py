#!/usr/bin/env python3
"""Interoperability test: a Python client generated with grpcio-tools from
proto/visage/v1/visage.proto talks to a running visage server.

    python tests/python/interop.py --server 127.0.0.1:50051

Generates the stubs into a temporary directory, then creates a gallery,
inserts (unary and streaming), searches, identifies, verifies, deletes and
compacts, checking every answer against numpy brute force, and checks the
error statuses, the health service and reflection. Prints `N passed, 0 failed`
and exits non-zero if anything failed.
"""

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import traceback
import uuid

import grpc
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def generate_stubs(proto_dir, out_dir):
    """Run grpc_tools.protoc on the visage proto; return (pb2, pb2_grpc)."""
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "visage/v1/visage.proto",
    ]
    subprocess.run(cmd, check=True)
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("visage.v1.visage_pb2")
    pb2_grpc = importlib.import_module("visage.v1.visage_pb2_grpc")
    return pb2, pb2_grpc


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn):
        try:
            fn()
        except Exception:  # noqa: BLE001 - report every failure and go on
            self.failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
        else:
            self.passed += 1
            print(f"ok   {name}")


def expect_status(fn, code, *fragments):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        for f in fragments:
            assert f in e.details(), f"{e.details()!r} lacks {f!r}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


def brute_force(vectors, ids, q, k):
    d = ((vectors.astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1)
    order = np.lexsort((ids, d))[:k]
    return [int(ids[i]) for i in order], [float(d[i]) for i in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=os.environ.get("VISAGE_SERVER", "127.0.0.1:50051"))
    ap.add_argument("--proto-dir", default=os.path.join(REPO, "proto"))
    args = ap.parse_args()
    addr = args.server.removeprefix("http://")

    checks = Checks()
    with tempfile.TemporaryDirectory() as gen:
        pb2, pb2_grpc = generate_stubs(args.proto_dir, gen)
        opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        channel = grpc.insecure_channel(addr, options=opts)
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb2_grpc.VisageStub(channel)
        gallery = "py-" + uuid.uuid4().hex[:12]
        rng = np.random.default_rng(7)
        n, subjects = 600, 30
        vectors = rng.uniform(-1, 1, size=(n, 128)).astype(np.float32)
        ids = np.arange(1000, 1000 + n, dtype=np.uint64)
        names = np.array([f"person-{i % subjects:02d}" for i in range(n)])
        probes = np.vstack([vectors[[3, 250, 599]], rng.uniform(-1, 1, size=(4, 128)).astype(np.float32)])

        def emb(i):
            return pb2.Embedding(id=int(ids[i]), subject=str(names[i]), vector=vectors[i].tolist())

        def health():
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            h = health_pb2_grpc.HealthStub(channel)
            for service in ("", "visage.v1.Visage"):
                r = h.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert r.status == health_pb2.HealthCheckResponse.SERVING, r

        def reflection():
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            r = reflection_pb2_grpc.ServerReflectionStub(channel)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            resp = next(iter(r.ServerReflectionInfo(iter([req]), timeout=10)))
            names_ = [s.name for s in resp.list_services_response.service]
            assert "visage.v1.Visage" in names_, names_
            assert "grpc.health.v1.Health" in names_, names_

        def create():
            info = stub.CreateGallery(pb2.CreateGalleryRequest(name=gallery), timeout=10)
            assert (info.name, info.dim, info.live) == (gallery, 128, 0), info
            expect_status(lambda: stub.CreateGallery(pb2.CreateGalleryRequest(name=gallery)),
                          grpc.StatusCode.ALREADY_EXISTS, gallery)
            listed = [g.name for g in stub.ListGalleries(pb2.ListGalleriesRequest()).galleries]
            assert gallery in listed, listed

        def insert():
            r = stub.Insert(pb2.InsertRequest(gallery=gallery, embeddings=[emb(i) for i in range(400)]), timeout=30)
            assert (r.inserted, r.replaced, r.batches) == (400, 0, 1), r

            def messages():
                for start in (400, 500):
                    yield pb2.InsertRequest(gallery=gallery, embeddings=[emb(i) for i in range(start, start + 100)])

            r = stub.InsertStream(messages(), timeout=30)
            assert (r.inserted, r.replaced, r.batches) == (200, 0, 2), r
            info = stub.GetGallery(pb2.GetGalleryRequest(name=gallery))
            assert (info.live, info.subjects) == (n, subjects), info
            got = stub.Get(pb2.GetRequest(gallery=gallery, ids=[1003, 99, 1599])).embeddings
            assert [e.id for e in got] == [1003, 1599]
            assert np.array_equal(np.array(got[0].vector, dtype=np.float32), vectors[3])

        def search():
            req = pb2.SearchRequest(gallery=gallery, queries=[pb2.Vector(values=p.tolist()) for p in probes], k=8)
            results = stub.Search(req, timeout=30).results
            assert len(results) == len(probes)
            for q, res in zip(probes, results):
                want_ids, want_d = brute_force(vectors, ids, q, 8)
                assert [h.id for h in res.hits] == want_ids, ([h.id for h in res.hits], want_ids)
                for h, d in zip(res.hits, want_d):
                    assert abs(h.distance - d) <= 1e-4 * max(d, 1.0), (h.distance, d)
                    assert not h.HasField("probability")
            assert results[0].hits[0].distance == 0.0 and results[0].hits[0].subject == names[3]

        def identify():
            req = pb2.IdentifyRequest(gallery=gallery, probes=[pb2.Vector(values=p.tolist()) for p in probes],
                                      k=3, max_distance=1.0)
            results = stub.Identify(req, timeout=30).results
            for i, (q, r) in enumerate(zip(probes, results)):
                d = ((vectors.astype(np.float64) - q.astype(np.float64)) ** 2).sum(axis=1)
                best = {}
                for j in np.lexsort((ids, d)):
                    best.setdefault(names[j], (float(d[j]), int(ids[j])))
                want = sorted(best.items(), key=lambda kv: (kv[1][0], kv[1][1]))[:3]
                assert [c.subject for c in r.candidates] == [s for s, _ in want], (i, r)
                assert [c.id for c in r.candidates] == [v[1] for _, v in want], (i, r)
                known = want[0][1][0] <= 1.0
                assert r.known == known and r.subject == (want[0][0] if known else ""), (i, r)
            assert [r.known for r in results] == [True, True, True, False, False, False, False]

        def verify():
            pairs = [
                pb2.VerifyPair(a=pb2.Vector(values=probes[3].tolist()), vector=pb2.Vector(values=probes[4].tolist())),
                pb2.VerifyPair(a=pb2.Vector(values=vectors[10].tolist()), id=1010),
                pb2.VerifyPair(a=pb2.Vector(values=vectors[10].tolist()), subject=str(names[11])),
            ]
            v = stub.Verify(pb2.VerifyRequest(gallery=gallery, pairs=pairs, max_distance=1.0), timeout=30).verdicts
            d = float(((probes[3].astype(np.float64) - probes[4].astype(np.float64)) ** 2).sum())
            assert abs(v[0].distance - d) <= 1e-4 * d and not v[0].same
            assert v[1].distance == 0.0 and v[1].same and v[1].matched_id == 1010
            mask = names == names[11]
            ds = ((vectors[mask].astype(np.float64) - vectors[10].astype(np.float64)) ** 2).sum(axis=1)
            assert abs(v[2].distance - ds.min()) <= 1e-4 * ds.min()
            assert v[2].matched_id == int(ids[mask][np.argmin(ds)])

        def errors():
            bad = [emb(0), pb2.Embedding(id=5, subject="x", vector=[0.0] * 127)]
            expect_status(lambda: stub.Insert(pb2.InsertRequest(gallery=gallery, embeddings=bad)),
                          grpc.StatusCode.INVALID_ARGUMENT, "embeddings[1]", "expected 128 values, got 127")
            nan = emb(1)
            nan.vector[4] = float("nan")
            expect_status(lambda: stub.Insert(pb2.InsertRequest(gallery=gallery, embeddings=[nan])),
                          grpc.StatusCode.INVALID_ARGUMENT, "embeddings[0]", "finite")
            expect_status(lambda: stub.Insert(pb2.InsertRequest(gallery=gallery, embeddings=[emb(2), emb(2)])),
                          grpc.StatusCode.INVALID_ARGUMENT, "embeddings[1]", "embeddings[0]")
            q = [pb2.Vector(values=probes[0].tolist())]
            expect_status(lambda: stub.Search(pb2.SearchRequest(gallery=gallery, queries=q, k=0)),
                          grpc.StatusCode.INVALID_ARGUMENT, "k")
            expect_status(lambda: stub.Search(pb2.SearchRequest(gallery=gallery, queries=q, k=10001)),
                          grpc.StatusCode.INVALID_ARGUMENT, "k")
            expect_status(lambda: stub.Search(pb2.SearchRequest(gallery="no-such-gallery", queries=q, k=1)),
                          grpc.StatusCode.NOT_FOUND, "no-such-gallery")
            expect_status(lambda: stub.Search(pb2.SearchRequest(gallery=gallery, queries=q, k=1,
                                                                rank_by=pb2.RANK_BY_HEAD)),
                          grpc.StatusCode.FAILED_PRECONDITION, "head")
            expect_status(lambda: stub.CreateGallery(pb2.CreateGalleryRequest(name="")),
                          grpc.StatusCode.INVALID_ARGUMENT, "name")
            info = stub.GetGallery(pb2.GetGalleryRequest(name=gallery))
            assert (info.live, info.deleted) == (n, 0), "a rejected request changed the gallery"

        def delete_and_compact():
            r = stub.Delete(pb2.DeleteRequest(gallery=gallery, ids=[1000, 1001, 424242], subjects=["person-05"]))
            gone = (np.isin(ids, [1000, 1001])) | (names == "person-05")
            assert r.deleted == int(gone.sum()), (r.deleted, int(gone.sum()))
            keep_v, keep_ids = vectors[~gone], ids[~gone]
            res = stub.Search(pb2.SearchRequest(gallery=gallery, queries=[pb2.Vector(values=vectors[5].tolist())],
                                                k=5)).results[0]
            assert [h.id for h in res.hits] == brute_force(keep_v, keep_ids, vectors[5], 5)[0]
            c = stub.Compact(pb2.CompactRequest(gallery=gallery), timeout=60)
            assert (c.before.live, c.before.deleted) == (n - r.deleted, r.deleted), c
            assert (c.after.live, c.after.deleted, c.after.subjects) == (n - r.deleted, 0, subjects - 1), c
            f = stub.Flush(pb2.FlushRequest(gallery=gallery))
            assert f.after.memtable_rows == 0

        def drop():
            r = stub.DropGallery(pb2.DropGalleryRequest(name=gallery))
            assert r.dropped.name == gallery
            expect_status(lambda: stub.GetGallery(pb2.GetGalleryRequest(name=gallery)), grpc.StatusCode.NOT_FOUND)

        for name, fn in [
            ("health service reports SERVING", health),
            ("reflection lists the services", reflection),
            ("create and list a gallery", create),
            ("insert (unary and streaming) and get", insert),
            ("search equals numpy brute force", search),
            ("identify equals brute force, open set", identify),
            ("verify vectors, ids and subjects", verify),
            ("bad requests get the right status and change nothing", errors),
            ("delete by ids and subject, compact, flush", delete_and_compact),
            ("drop the gallery", drop),
        ]:
            checks.run(name, fn)
        channel.close()
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
