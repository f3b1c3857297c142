"""
Tests for hq.logs: log files that fail must not stop the server.
"""

from __future__ import annotations

import http.client
import io
import os
import sys

from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from hq.logs import ReopenableFile, app_observer
from tests.serverprocess import ServerProcess


class ReopenableFileTests(SynchronousTestCase):
    """
    Writing, reopening, and surviving a log that cannot be written.
    """

    def test_reopen_writes_to_the_new_file_at_the_path(self) -> None:
        """After a rename and reopen, lines go to a new file at the original path."""
        path = self.mktemp()
        out = ReopenableFile(path)
        out.write("one\n")
        os.rename(path, path + ".1")
        out.reopen()
        out.write("two\n")
        out.close()
        with open(path + ".1") as f:
            self.assertEqual(f.read(), "one\n")
        with open(path) as f:
            self.assertEqual(f.read(), "two\n")

    def test_unwritable_log_drops_lines_and_warns_once(self) -> None:
        """Writes to a full disk are dropped and counted, with one warning on stderr."""
        warnings = io.StringIO()
        self.patch(sys, "__stderr__", warnings)
        out = ReopenableFile("/dev/full")
        for _ in range(3):
            out.write("line\n")
            out.flush()
        self.assertEqual(out.dropped, 6)
        self.assertEqual(warnings.getvalue().count("cannot write log /dev/full"), 1)

    def test_reopen_failure_keeps_the_old_file(self) -> None:
        """A reopen that cannot open the path keeps writing to the old file."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "hq.log")
        self.patch(sys, "__stderr__", io.StringIO())
        out = ReopenableFile(path)
        os.rename(path, path + ".1")
        # A directory at the path cannot be opened as a file, even by root.
        os.mkdir(path)
        out.reopen()
        out.write("still here\n")
        out.close()
        with open(path + ".1") as f:
            self.assertEqual(f.read(), "still here\n")


class FullLogDiskTests(SynchronousTestCase):
    """
    A real server whose access log cannot be written.
    """

    def test_api_keeps_answering_on_a_keep_alive_connection(self) -> None:
        """With access_log_file on a full disk, requests on one connection all answer."""
        server = ServerProcess(self.mktemp(), access_log_file="/dev/full")
        self.addCleanup(server.stop)
        server.start()
        host, port = server.base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        self.addCleanup(connection.close)
        for _ in range(3):
            connection.request("GET", "/stats")
            response = connection.getresponse()
            self.assertEqual(response.status, 200)
            response.read()


class LevelTests(SynchronousTestCase):
    """
    The app log's level: what the observer lets through.
    """

    def written(self, level: str) -> list[str]:
        """
        Log one event at each level through ``app_observer(level)``; return the lines written.
        """
        out = ReopenableFile(self.mktemp())
        self.addCleanup(out.close)
        log = Logger(namespace="hq.test.levels", observer=app_observer(level, out))
        for name in ("debug", "info", "warn", "error", "critical"):
            getattr(log, name)("event {name}", name=name)
        out.flush()
        assert out.path is not None
        with open(out.path) as f:
            return [line.rsplit(" ", 1)[-1].strip() for line in f if line.strip()]

    def test_each_level_lets_through_itself_and_above(self) -> None:
        """debug lets everything through; warn only warn, error and critical; off nothing."""
        self.assertEqual(self.written("debug"), ["debug", "info", "warn", "error", "critical"])
        self.assertEqual(self.written("info"), ["info", "warn", "error", "critical"])
        self.assertEqual(self.written("warn"), ["warn", "error", "critical"])
        self.assertEqual(self.written("error"), ["error", "critical"])
        self.assertEqual(self.written("off"), [])

    def test_an_event_without_a_namespace_is_dropped(self) -> None:
        """As Twisted's level predicate: an event with no namespace is not written."""
        out = ReopenableFile(self.mktemp())
        self.addCleanup(out.close)
        app_observer("debug", out)({"log_level": LogLevel.error, "log_format": "x", "log_time": 0})
        out.flush()
        assert out.path is not None
        with open(out.path) as f:
            self.assertEqual(f.read(), "")
