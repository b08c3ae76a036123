"""Fixtures: a `db` in both modes over the same tests.

`embedded`: ``visage.open(tmp_path)``. `remote`: the real server binary
(``VISAGE_SERVER_BIN``, default target/debug/visage-server from the
repository root) started on 127.0.0.1:0 with a temporary data directory; its
address is read from its ``visage-server listening on ADDR`` line, and it is
stopped with SIGTERM (and must exit 0) at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import numpy as np
import pytest

import visage

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60


def server_bin() -> Path:
    p = os.environ.get("VISAGE_SERVER_BIN")
    path = Path(p) if p else REPO / "target" / "debug" / "visage-server"
    if not path.is_absolute():
        path = REPO / path
    return path


class Server:
    """One visage-server process on a data directory."""

    def __init__(self, data_dir: Path, extra: Optional[List[str]] = None) -> None:
        self.data_dir = data_dir
        self.extra = extra or []
        self.proc: Optional[subprocess.Popen] = None
        self.addr = ""
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    def start(self) -> "Server":
        binary = server_bin()
        if not binary.exists():
            pytest.fail(
                f"no server binary at {binary}: build it (cargo build -p visage-server) "
                f"or set VISAGE_SERVER_BIN"
            )
        self.proc = subprocess.Popen(
            [str(binary), "--data-dir", str(self.data_dir), "--listen", "127.0.0.1:0", *self.extra],
            stdout=subprocess.PIPE,
            stderr=self.log.open("ab"),
            text=True,
        )
        found: List[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("visage-server listening on "):
                    found.append(line.split(" on ", 1)[1].strip())
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(STARTUP_SECONDS) or not found:
            self.proc.kill()
            pytest.fail(f"the server printed no address; its log:\n{self.log.read_text()}")
        self.addr = found[0]
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("the server did not stop within 60 s of SIGTERM")
        self.proc = None
        assert code == 0, f"the server exited {code} after SIGTERM:\n{self.log.read_text()}"


class Opener:
    """Opens the same data directory again (embedded: reopen; remote:
    restart the server on it) as a test's mode needs."""

    def __init__(self, mode: str, root: Path) -> None:
        self.mode = mode
        self.root = root
        self.server: Optional[Server] = None
        self.dbs: List[visage.Database] = []

    def open(self) -> visage.Database:
        if self.mode == "embedded":
            db = visage.open(self.root / "data")
        else:
            if self.server is None:
                self.server = Server(self.root / "data").start()
            db = visage.connect(self.server.addr)
        self.dbs.append(db)
        return db

    def reopen(self, db: visage.Database) -> visage.Database:
        """Close ``db`` and open the same data again (a server restart)."""
        db.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        return self.open()

    def close(self) -> None:
        for db in self.dbs:
            db.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(params=["embedded", "remote"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    o = Opener(request.param, tmp_path)
    yield o
    o.close()


@pytest.fixture
def db(opener: Opener) -> visage.Database:
    return opener.open()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def wait_for(cond: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll ``cond`` until it holds (never a fixed sleep)."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
