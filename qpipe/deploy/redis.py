"""A throwaway Redis server on loopback, the Celery broker of the Celery test.

Debian's ``redis-server`` package provides the binary; the server keeps nothing on disk (no RDB
snapshots, no append-only file), listens on 127.0.0.1 only and is gone on exit.
"""

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from qpipe.deploy.servers import free_port, stop


class LocalRedis:
    """``with LocalRedis() as redis:`` a fresh server at ``redis.url``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="qpipe-redis-"))
        self._server: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "LocalRedis":
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("Redis is not installed: `apt-get install redis-server` (Debian) provides redis-server")
        self._server = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)],
            stdout=open(self.root / "server.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        stop(self._server)
        shutil.rmtree(self.root, ignore_errors=True)
