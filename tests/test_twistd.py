"""
HQ under twistd as users run it: the venv's real ``twistd`` script, the plugin
found from an editable install, daemon mode, start-up errors and logs.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import hq
from hq import __version__
from tests.serverprocess import (
    SERVE,
    TWISTD,
    TWISTD_SCRIPT,
    ConsoleServer,
    ServerProcess,
    wait_for,
)


def twistd(*options: str) -> list[str]:
    """
    Return the command running the real twistd script with ``options``, then ``hq -c``.
    """
    if not os.path.exists(TWISTD_SCRIPT):
        raise SkipTest(f"no twistd script at {TWISTD_SCRIPT}")
    return [TWISTD_SCRIPT, *options, "hq", "-c"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PluginTests(SynchronousTestCase):
    """
    The twistd plugin after the README's set-up (an editable install).
    """

    def test_plugin_found_from_any_directory(self) -> None:
        """Outside the checkout, twisted.plugin finds ``hq`` and ``hq`` is this code."""
        script = (
            "import hq; from twisted.plugin import getPlugins;"
            "from twisted.application.service import IServiceMaker;"
            "print([p.tapname for p in getPlugins(IServiceMaker)].count('hq'), hq.__file__)"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        self.assertEqual(out, ["1", os.path.abspath(hq.__file__)])

    def test_twistd_script_serves_from_another_directory(self) -> None:
        """The venv's ``twistd -n hq -c FILE``, run outside the checkout, serves the API."""
        directory = os.path.abspath(self.mktemp())
        server = ServerProcess(
            directory, command=twistd("-n", "--pidfile="), cwd=tempfile.gettempdir()
        )
        self.addCleanup(server.stop)
        server.start()
        status, info = server.request("GET", "/")
        self.assertEqual((status, info["version"]), (200, __version__))


class TwistdLogTests(SynchronousTestCase):
    """
    With log_file and access_log_file empty, HQ's lines go where twistd's go, once.
    """

    def test_foreground_logs_to_stdout_once(self) -> None:
        """``twistd -n``: access lines and "HQ stopped" on stdout, once each, unprefixed."""
        server = ConsoleServer(
            self.mktemp(),
            command=twistd("-n", "--pidfile="),
            log_file="",
            access_log_file="",
        )
        self.addCleanup(server.stop)
        server.start()
        self.assertEqual(server.request("GET", "/stats")[0], 200)
        wait_for(lambda: "GET /stats 200" in server.console(), 10, "the access line")
        server.kill(signal.SIGTERM)
        code, output = server.wait_exit()
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertEqual(output.count("GET /stats 200"), 1, output)
        self.assertEqual(output.count("HQ stopped"), 1, output)
        self.assertEqual(output.count("listening on"), 1, output)
        self.assertNotIn("#info] 20", output)
        self.assertNotIn("[stdout#", output)

    def test_foreground_logfile_gets_each_line_once(self) -> None:
        """``twistd -n --logfile=F``: access lines and "HQ stopped" in F, once each."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        logfile = os.path.join(directory, "twistd.log")
        server = ConsoleServer(
            directory,
            watch=logfile,
            command=twistd("-n", "--pidfile=", f"--logfile={logfile}"),
            log_file="",
            access_log_file="",
        )
        self.addCleanup(server.stop)
        server.start()
        self.assertEqual(server.request("GET", "/stats")[0], 200)
        wait_for(lambda: "GET /stats 200" in server.watched(), 10, "the access line")
        server.kill(signal.SIGTERM)
        code, output = server.wait_exit()
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertEqual(output, "")
        logged = server.watched()
        self.assertEqual(logged.count("GET /stats 200"), 1, logged)
        self.assertEqual(logged.count("HQ stopped"), 1, logged)
        self.assertNotIn("[stdout#", logged)

    def test_daemon_serves_logs_to_its_logfile_and_stops_on_sigterm(self) -> None:
        """
        ``twistd --pidfile=P --logfile=F hq``: the parent returns once HQ is
        ready; F gets each line once; SIGUSR1 rotates F; SIGTERM stops HQ.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        logfile = os.path.join(directory, "twistd.log")
        pidfile = os.path.join(directory, "twistd.pid")
        server = ConsoleServer(
            directory,
            watch=logfile,
            command=twistd(f"--pidfile={pidfile}", f"--logfile={logfile}"),
            log_file="",
            access_log_file="",
        )
        server.start(wait=False)
        code, output = server.wait_exit()
        self.assertEqual((code, output), (0, ""))
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(lambda: alive(pid) and os.kill(pid, signal.SIGKILL))
        self.assertIn("listening on", server.watched())
        host, port = wait_for(server._address, 10, "the address")
        server.base = f"http://{host}:{port}"
        self.assertEqual(server.request("GET", "/stats")[0], 200)
        wait_for(lambda: "GET /stats 200" in server.watched(), 10, "the access line")
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: "Reopened the log files" in server.watched(), 10, "the reopen")
        self.assertEqual(server.request("GET", "/job")[0], 200)
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 20, "the daemon to exit")
        with open(logfile + ".1") as f:
            before = f.read()
        after = server.watched()
        self.assertEqual(before.count("GET /stats 200"), 1, before)
        self.assertEqual(after.count("GET /job 200"), 1, after)
        self.assertEqual(after.count("HQ stopped"), 1, after)
        self.assertNotIn("[stdout#", before + after)
        self.assertFalse(os.path.exists(pidfile))


class StartErrorTests(SynchronousTestCase):
    """
    Start-up errors reach stderr (``error: ...``) and the log, exit 1, under
    ``hq serve``, ``twistd -n`` and a twistd daemon.
    """

    def refused(self, command: list[str], **config: object) -> tuple[str, str]:
        """
        Start a server that cannot start; return its console and its log.
        """
        server = ConsoleServer(self.mktemp(), command=command, **config)
        self.addCleanup(server.stop)
        server.start(wait=False)
        code, output = server.wait_exit()
        self.assertEqual(code, 1, output)
        return output, server.log_text()

    def check_both(self, message: str, in_log: bool = True, **config: object) -> None:
        for command in (SERVE, TWISTD):
            output, log = self.refused(command, **config)
            self.assertIn(f"error: {message}", output)
            self.assertEqual(output.count(f"error: {message}"), 1, output)
            where = log if in_log else output
            self.assertIn(f"HQ cannot start: {message}", where)
            self.assertNotIn("Shutting down", output + log)
            self.assertNotIn("Traceback", output + log)

    def busy_port(self) -> int:
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port: int = sock.getsockname()[1]
        return port

    def test_port_in_use(self) -> None:
        """An address in use: its message on stderr and in the log, exit 1."""
        port = self.busy_port()
        message = f"cannot listen on 127.0.0.1:{port}: Address already in use"
        self.check_both(message, addr=f"127.0.0.1:{port}")

    def test_data_dir_in_use(self) -> None:
        """A data_dir locked by another server: named on stderr and in the log."""
        first = ServerProcess(self.mktemp())
        self.addCleanup(first.stop)
        first.start()
        assert first.process is not None
        data_dir = os.path.join(first.directory, "data")
        message = f"another HQ server (pid {first.process.pid}) is using data_dir {data_dir}"
        self.check_both(message, data_dir=data_dir)

    def test_invalid_config(self) -> None:
        """An unknown key: named on stderr (twistd: and in twistd's log), exit 1."""
        for command in (SERVE, TWISTD):
            output, _ = self.refused(command, dispatcherz=3)
            self.assertEqual(output.count("error: unknown configuration key 'dispatcherz'"), 1)
            self.assertNotIn("Usage:", output)
        self.assertIn("HQ cannot start: unknown configuration key", output)

    def newer_data_dir(self) -> str:
        """
        Return a data_dir whose store has a schema version from a newer HQ.
        """
        data_dir = os.path.join(os.path.abspath(self.mktemp()), "data")
        os.makedirs(data_dir)
        conn = sqlite3.connect(os.path.join(data_dir, "hq.sqlite3"))
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        return data_dir

    def test_newer_schema_fails_without_shutting_down(self) -> None:
        """A store of a newer schema: "HQ cannot start" only, never "Shutting down"."""
        data_dir = self.newer_data_dir()
        path = os.path.join(data_dir, "hq.sqlite3")
        self.check_both(f"{path} has schema version 99", data_dir=data_dir)

    def daemon_refused(self, message: str, **config: object) -> None:
        """
        Start a twistd daemon that cannot start: its command exits 1 with
        ``error: message`` on stderr; its log says it; no pidfile is left.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        logfile = os.path.join(directory, "twistd.log")
        pidfile = os.path.join(directory, "twistd.pid")
        command = twistd(f"--pidfile={pidfile}", f"--logfile={logfile}")
        began = time.monotonic()
        output, _ = self.refused(command, log_file="", **config)
        self.assertLess(time.monotonic() - began, 15)
        self.assertIn(f"error: {message}", output)
        with open(logfile) as f:
            logged = f.read()
        self.assertIn(f"HQ cannot start: {message}", logged)
        self.assertNotIn("Shutting down", logged)
        self.assertFalse(os.path.exists(pidfile))

    def test_daemon_reports_a_port_in_use(self) -> None:
        """A twistd daemon on a port in use: ``error: ...`` on stderr, in its log, exit 1."""
        port = self.busy_port()
        message = f"cannot listen on 127.0.0.1:{port}: Address already in use"
        self.daemon_refused(message, addr=f"127.0.0.1:{port}")

    def test_daemon_waits_for_the_store_before_returning(self) -> None:
        """A daemon whose store is refused after the fork still makes its command exit 1."""
        data_dir = self.newer_data_dir()
        path = os.path.join(data_dir, "hq.sqlite3")
        self.daemon_refused(f"{path} has schema version 99", data_dir=data_dir)
