"""
A throwaway PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` in a
temporary directory, listening on a free port of 127.0.0.1, stopped and removed
when the test process exits.

PostgreSQL refuses to run as root (CI runs as root): then the server runs as
the ``postgres`` system user (created by Debian's package; created here if
missing) through ``runuser``, in a directory that user owns. The tests never
use a PostgreSQL already running on the machine unless told to:

``HQ_TEST_POSTGRES_URL``
    The URL of an existing server to use instead of starting one, e.g.
    ``postgresql://hq@db.test:5432/postgres`` (a role that may create
    databases: each test makes its own, ``hq_test_<pid>_<n>``, dropped when
    the test process exits). The tests that restart the server then skip,
    saying why.

In CI (``CI`` set) nothing here is a reason to skip: without the binaries, or
with a server that does not start, the tests fail (``scripts/test`` installs
the ``postgresql`` package).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse

#: The user the server runs as when the tests run as root.
SERVER_USER = "postgres"
SUPERUSER = "hq"
#: The environment variable naming an existing server to use instead.
URL_VARIABLE = "HQ_TEST_POSTGRES_URL"
#: Temporary directories of test servers, and the file naming the test process.
_PREFIX = "hq-pg-"
_OWNER = "owner.pid"


def find_bindir() -> str | None:
    """
    Return the directory of ``initdb`` and ``pg_ctl`` (the newest installed
    Debian version, else the ``PATH``), or ``None`` when they are missing.
    """
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return os.path.dirname(initdb)
    return None


def in_ci() -> bool:
    """
    Return whether the tests run in CI (``CI`` set to anything but empty, 0 or false).
    """
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_reason() -> str | None:
    """
    Return why the PostgreSQL tests cannot run here, or ``None`` when they can.

    In CI (``CI`` set) missing binaries are not a reason to skip: the tests
    then fail, since ``scripts/test`` installs PostgreSQL.
    """
    if os.environ.get(URL_VARIABLE):
        return None
    if find_bindir() is None and not in_ci():
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
            "scripts/test installs them (apt-get install postgresql)"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """
    The user to run the server as: ``None`` to run as ourselves (not root).
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


class PostgresServer:
    """
    One PostgreSQL server in a temporary directory. :meth:`start` creates and
    starts it; :meth:`stop` and :meth:`start` again keep its data and port.
    """

    #: Whether the tests may stop, start and restart it.
    can_restart = True

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bindir = bindir
        self.user = _server_user()
        self._remove_orphans()
        # Under /tmp, not the trial directory: the server user must reach it.
        self.base = tempfile.mkdtemp(prefix=_PREFIX)
        with open(os.path.join(self.base, _OWNER), "w") as f:
            f.write(str(os.getpid()))
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self.port = _free_port()
        self._databases = 0
        if self.user is not None:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _remove_orphans(self) -> None:
        """
        Stop and delete the servers of test processes that died without
        cleaning up (killed, or a crashed interpreter).
        """
        for base in glob.glob(os.path.join(tempfile.gettempdir(), _PREFIX + "*")):
            try:
                with open(os.path.join(base, _OWNER)) as f:
                    os.kill(int(f.read()), 0)
                continue  # its process lives
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue  # not ours to judge
            data = os.path.join(base, "data")
            if os.path.exists(os.path.join(data, "postmaster.pid")):
                command = [os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", "immediate"]
                command += ["-w", "stop"]
                if self.user is not None:
                    command = ["runuser", "-u", self.user.pw_name, "--", *command]
                subprocess.run(command, capture_output=True, check=False)
            shutil.rmtree(base, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [os.path.join(self.bindir, program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.base)
        if result.returncode != 0:
            tail = ""
            if os.path.exists(self.log):
                with open(self.log) as f:
                    tail = f.read()[-2000:]
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )

    def start(self, durable: bool = False) -> None:
        """
        Start the server and wait until it accepts connections; ``durable``
        keeps PostgreSQL's crash safety (fsync), which tests do without.
        """
        self._options = self._server_options(durable)
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", self._options, "-w", "start")

    def _server_options(self, durable: bool) -> str:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
        options += "-c max_connections=100 -c shared_buffers=32MB"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        return options

    def restart(self) -> None:
        """
        ``pg_ctl restart`` (fast: connections are cut), with the options of
        the last start; return once it accepts connections again.
        """
        options = getattr(self, "_options", None) or self._server_options(False)
        self._run(
            "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-m", "fast", "-w", "restart"
        )

    def stop(self) -> None:
        """
        Stop the server (fast shutdown: connections are cut).
        """
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def dsn(self, database: str = "postgres") -> str:
        """
        Return the URL of ``database`` on this server.
        """
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """
        Create an empty database; return its URL.
        """
        import psycopg

        self._databases += 1
        name = f"hq_test_{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            # FILE_COPY (PostgreSQL 15+) skips logging the copy: faster for a test.
            strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0{strategy}")
        return self.dsn(name)

    def remove(self) -> None:
        """
        Stop the server if it runs and delete its directory.
        """
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)


class ExternalServer:
    """
    An existing PostgreSQL server (``$HQ_TEST_POSTGRES_URL``): databases are
    made on it and dropped at exit; it is never stopped or restarted.
    """

    can_restart = False

    def __init__(self, url: str) -> None:
        self.url = url
        self._databases: list[str] = []

    def dsn(self, database: str = "") -> str:
        """
        Return the URL of ``database`` on this server (the given URL's own without one).
        """
        if not database:
            return self.url
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + database))

    def new_database(self) -> str:
        """
        Create an empty database named after this process; return its URL.
        """
        import psycopg

        name = f"hq_test_{os.getpid()}_{len(self._databases) + 1}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        self._databases.append(name)
        return self.dsn(name)

    def remove(self) -> None:
        """
        Drop the databases this process made (those still in use are left).
        """
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                for name in self._databases:
                    try:
                        conn.execute(f"DROP DATABASE IF EXISTS {name}")
                    except psycopg.Error:
                        pass
        except psycopg.Error:
            pass

    @property
    def port(self) -> int:
        """
        The server's port (5432 when the URL names none).
        """
        return urllib.parse.urlsplit(self.url).port or 5432

    def start(self, durable: bool = False) -> None:
        """
        Not for an external server: the test calling it skips, saying why.
        """
        from unittest import SkipTest

        raise SkipTest(f"{URL_VARIABLE} names a server the tests may not stop or start")

    def stop(self) -> None:
        """
        Not for an external server: the test calling it skips, saying why.
        """
        self.start()

    def restart(self) -> None:
        """
        Not for an external server: the test calling it skips, saying why.
        """
        self.start()


_server: PostgresServer | ExternalServer | None = None


def server() -> PostgresServer | ExternalServer:
    """
    Return the test process's PostgreSQL server: ``$HQ_TEST_POSTGRES_URL``'s
    if set, else one started on first use and removed when the process exits.
    Fails with :class:`RuntimeError` when it cannot start (a test error, never
    a skip).
    """
    global _server
    if _server is None:
        url = os.environ.get(URL_VARIABLE)
        if url:
            _server = ExternalServer(url)
        else:
            _server = PostgresServer()
            _server.start()
        atexit.register(_server.remove)
    return _server
