"""What only the remote mode has: API keys, TLS, an unreachable server."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

import visage

from conftest import Server

ADMIN = "admin-key-0123456789abcdef"
WRITE = "write-key-0123456789abcdef"
READ = "read-key-0123456789abcdef0"


@pytest.fixture
def keyed_server(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# roles\nadmin {ADMIN}\nwrite {WRITE}\nread {READ}\n")
    keys.chmod(0o600)
    s = Server(tmp_path / "data", ["--api-keys", str(keys)]).start()
    yield s
    s.stop()


def test_api_keys(keyed_server):
    addr = keyed_server.addr
    with visage.connect(addr) as anonymous:
        with pytest.raises(visage.Unauthenticated, match="missing API key"):
            anonymous.galleries()
    with visage.connect(addr, api_key="not-a-key-0123456789") as wrong:
        with pytest.raises(visage.Unauthenticated):
            wrong.galleries()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 16)).astype(np.float32)
    with visage.connect(addr, api_key=ADMIN) as admin:
        g = admin.create_gallery("keys", dim=16)
        g.add(x, "s")
    with visage.connect(addr, api_key=READ) as reader:
        with pytest.raises(visage.PermissionDenied) as e:
            reader.create_gallery("nope", dim=16)
        assert e.value.code == "PERMISSION_DENIED"
        g = reader.gallery("keys")
        D, I = g.search(x[:2], 1)
        assert (D[:, 0] == 0).all()
        with pytest.raises(visage.PermissionDenied):
            g.add(x, "s")
    with visage.connect(addr, api_key=WRITE) as writer:
        assert len(writer.gallery("keys").add(x, "t")) == 10
        with pytest.raises(visage.PermissionDenied):
            writer.gallery("keys").remove(subjects="t")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_server(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test CA")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", "/CN=visage test CA", "-keyout", "ca.key", "-out", "ca.pem",
             cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
             cwd=d)
    s = Server(
        tmp_path / "data",
        ["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key")],
    ).start()
    yield s, d / "ca.pem"
    s.stop()


def test_tls_with_a_ca_path_or_bytes(tls_server):
    server, ca = tls_server
    with visage.connect(server.addr, tls_ca=ca) as db:
        db.create_gallery("tls", dim=16)
    with visage.connect(f"https://{server.addr}", tls_ca=ca.read_bytes()) as db:
        assert [g.name for g in db.galleries()] == ["tls"]
    # Plain text to a TLS server fails as unavailable.
    with visage.connect(server.addr, timeout=10) as db:
        with pytest.raises(visage.Unavailable):
            db.galleries()


def test_an_unreachable_server_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more.
    with visage.connect(f"127.0.0.1:{port}", timeout=10) as db:
        with pytest.raises(visage.Unavailable):
            db.galleries()
    with pytest.raises(visage.InvalidArgument, match="timeout must be"):
        visage.connect("127.0.0.1:1", timeout=-1)


def test_a_call_past_its_deadline():
    # A listener that completes TCP handshakes but never speaks HTTP/2: the
    # call can never be answered, so it always ends at its deadline (a tiny
    # deadline against a real server is a race a fast answer can win).
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with visage.connect(f"127.0.0.1:{port}", timeout=0.3) as db:
            with pytest.raises(visage.DeadlineExceeded) as e:
                db.galleries()
        assert isinstance(e.value, TimeoutError) and e.value.code == "DEADLINE_EXCEEDED"


def test_the_wire_decoders_agree_with_protobuf():
    """Search's flat answer and Get's embeddings, decoded with numpy, are
    what protobuf decodes (ids across the whole uint64 range, NaN, inf)."""
    from visage import _remote
    from visage.v1 import visage_pb2 as pb

    rng = np.random.default_rng(9)
    n, k = 7, 5
    ids = rng.integers(0, 2**64 - 1, size=n * k, dtype=np.uint64, endpoint=True)
    ids[:4] = [0, 1, 127, 2**64 - 1]
    dist = rng.standard_normal(n * k).astype(np.float32)
    dist[-3:] = np.inf
    probs = rng.random(n * k).astype(np.float32)
    probs[-3:] = np.nan
    subjects = [f"s{i}" if i % 3 else "" for i in range(n * k)]
    resp = pb.SearchResponse(
        k=k, counts=[k] * (n - 1) + [2], ids=ids.tolist(), distances=dist.tolist(),
        subjects=subjects, probabilities=probs.tolist(),
    )
    flat = _remote._Flat(resp.SerializeToString())
    assert flat.k == k and flat.results == 0
    assert flat.counts.tolist() == list(resp.counts)
    assert flat.ids.dtype == np.uint64 and flat.ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(flat.distances, dist)
    np.testing.assert_array_equal(flat.probabilities, probs)
    assert flat.similarities.size == 0 and flat.subjects == subjects
    vecs = rng.standard_normal((3, 16)).astype(np.float32)
    get = pb.GetResponse(embeddings=[
        pb.Embedding(id=int(i), subject=f"p{i}", vector=v.tolist())
        for i, v in zip([5, 2**63, 0], vecs)
    ])
    v, s, i = _remote._embeddings(get.SerializeToString(), 16)
    np.testing.assert_array_equal(v, vecs)
    assert s == ["p5", f"p{2**63}", "p0"] and i.tolist() == [5, 2**63, 0]
    v, s, i = _remote._embeddings(b"", 16)
    assert v.shape == (0, 16) and s == [] and i.size == 0
