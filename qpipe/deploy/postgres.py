"""A throwaway PostgreSQL server on loopback, for the deployment tests and the event-log benchmark.

Debian's ``postgresql`` package provides the binaries (``initdb``, ``postgres``); the server lives in a
temporary directory, listens on 127.0.0.1 only, trusts local connections and is gone on exit. PostgreSQL
refuses to run as root, so under root it runs as the ``postgres`` user that the package creates.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from qpipe.deploy.servers import free_port, stop


def _bindir() -> Path:
    found = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None) or shutil.which("initdb")
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (Debian) provides initdb")
    return Path(found).resolve().parent


class LocalPostgres:
    """``with LocalPostgres() as pg:`` a fresh server with an empty database ``pg.database`` owned by ``pg.user``."""

    user = "dagster"
    database = "dagster"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="qpipe-postgres-"))
        self._server: subprocess.Popen | None = None
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def env(self) -> dict[str, str]:
        """The variables deploy/postgres/dagster.yaml reads."""
        return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USERNAME": self.user,
                "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": self.database}

    def create_database(self, name: str) -> str:
        """A new empty database on the server, owned by ``user``; returns its name."""
        self._run(str(_bindir() / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return name

    def libpq(self, database: str | None = None) -> str:
        """The server's connection string (libpq's key=value form), for ``database`` or the default one."""
        return f"dbname={database or self.database} host=127.0.0.1 port={self.port} user={self.user}"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr or done.stdout}")

    def __enter__(self) -> "LocalPostgres":
        bindir, data = _bindir(), self.root / "data"
        if self._as:
            os.chown(self.root, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(str(bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        self._server = subprocess.Popen(
            [*self._as, str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.root),
             "-c", "listen_addresses=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "w"))
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode:
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        self.create_database(self.database)
        return self

    def __exit__(self, *exc) -> None:
        stop(self._server)  # SIGTERM: PostgreSQL's "smart" shutdown
        shutil.rmtree(self.root, ignore_errors=True)
