"""Real servers on 127.0.0.1 for the multi-host tests and the tuning benchmark.

- :class:`PostgresCluster`: ``initdb`` into a temporary directory, ``pg_ctl start`` on a free port
  (TCP on 127.0.0.1 only, trust authentication, durability off: it is thrown away), databases created
  with :meth:`PostgresCluster.create_database`, ``pg_ctl stop`` and the directory removed at the end.
  As root (CI), the cluster runs as the ``postgres`` user (``nobody`` without one): PostgreSQL refuses
  to run as root.
- :class:`MlflowServer`: ``mlflow server`` backed by a database of the cluster, serving artifacts
  from a local destination folder (``--serve-artifacts``), so clients upload through HTTP.

Both are context managers that need nothing from pytest; the fixtures at the end (``postgres``,
``mlflow_server``: import ``postgres_fixture`` and ``mlflow_server_fixture`` into a test module) wrap
them for the tests, and ``benchmarks/bench_tuning.py`` imports this module for its own servers.

The PostgreSQL binaries are looked up on PATH, then under ``/usr/lib/postgresql/<version>/bin`` (where
Debian's ``postgresql`` package puts them, off PATH). Without them the fixtures skip, or fail when the
environment variable CI is set (``.ci/run`` installs the package).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

PG_LIB = Path("/usr/lib/postgresql")
BIN = Path(sys.executable).parent


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = []
    for folder in PG_LIB.glob("*/bin"):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file() and re.fullmatch(r"\d+", folder.parent.name):
            versions.append((int(folder.parent.name), folder))
    return max(versions)[1] if versions else None


MISSING_PG = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor under /usr/lib/postgresql/*/bin: "
    "install the distribution's server package (apt-get install postgresql; .ci/run does when it is root)"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.is_file() else ""
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{tail}")


class _Started:
    """A server used as a context manager: ``start()`` on entry (``stop()`` if that fails), ``stop()`` on exit."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresCluster(_Started):
    """A throw-away PostgreSQL cluster on 127.0.0.1:``port``; superuser ``blab``, no password."""

    user = "blab"

    def __init__(self, pg_bin: Path | None = None):
        found = pg_bin or find_pg_bin()
        if found is None:
            raise FileNotFoundError(MISSING_PG)
        self.bin = Path(found)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="blab-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse root
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self._owner = pwd.getpwnam(name)
                    break
            if self._owner is None:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)

    def _demote(self) -> None:
        if self._owner is not None:
            os.setgid(self._owner.pw_gid)
            os.setuid(self._owner.pw_uid)

    def _pg(self, tool: str, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=self._demote if self._owner is not None else None,
            env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
            cwd=self.dir,
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{log}")

    def start(self) -> PostgresCluster:
        self._pg("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync")
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.dir}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)
        return self

    def url(self, database: str = "postgres", driver: str = "") -> str:
        """The database's URL; ``driver`` ("psycopg2") names the SQLAlchemy driver, as the ``mlflow server``
        command needs: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, driver: str = "") -> str:
        """Create database ``name`` (letters, digits, underscores); returns its URL (see :meth:`url`)."""
        import psycopg2

        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: expected lower-case letters, digits and underscores")
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return self.url(name, driver)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer(_Started):
    """``mlflow server`` on 127.0.0.1:``port``, runs in ``backend_uri``, artifacts served from ``artifacts``."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path):
        self.backend_uri = backend_uri
        self.artifacts = Path(artifacts)
        self.log = Path(log)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def _healthy(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server exited with {self._proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 180) -> MlflowServer:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("mlflow", path=str(BIN)) or "mlflow"
        cmd = [
            exe,
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with open(self.log, "w") as fh:
            # its own session: stop() ends the server and the workers it starts, nothing else
            self._proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _wait_for(self._healthy, timeout, f"mlflow server on {self.url}", self.log)
        return self

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=20)


# --- pytest fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session; each test creates the databases it needs."""
    if find_pg_bin() is None:
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING_PG}; CI is set, so the multi-host tests must run")
        pytest.skip(MISSING_PG)
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session", name="mlflow_server")
def mlflow_server_fixture(postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """An ``mlflow server`` backed by the cluster's database ``mlflow``, artifacts in a temporary folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    backend = postgres.create_database("mlflow", driver="psycopg2")
    with MlflowServer(backend, folder / "artifacts", folder / "server.log") as server:
        yield server
