"""
Tests for hq.logs: log files that fail must not stop the server.
"""

from __future__ import annotations

import http.client
import io
import os
import sys
from typing import IO, Any

from twisted.internet.task import Clock
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


class TurnBatchingTests(SynchronousTestCase):
    """
    With a reactor, the lines of one of its turns are written together.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.mktemp()
        self.out = ReopenableFile(self.path, turns=self.clock)
        self.addCleanup(self.out.close)

    def written(self, path: str | None = None) -> str:
        with open(path or self.path) as f:
            return f.read()

    def test_lines_of_one_turn_are_written_together_at_the_next(self) -> None:
        """Nothing is written during the turn; one timed call writes all its lines."""
        writes: list[str] = []
        real = self.out._file
        self.patch(self.out, "_file", _Recording(real, writes))
        for n in range(3):
            self.out.write(f"line {n}\n")
        self.assertEqual(self.written(), "")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.written(), "line 0\nline 1\nline 2\n")
        self.assertEqual(writes, ["line 0\nline 1\nline 2\n"])
        self.out.write("line 3\n")
        self.clock.advance(0)
        self.assertEqual(writes[1:], ["line 3\n"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_and_close_write_what_is_kept(self) -> None:
        """flush() writes the turn's lines at once and cancels the timed call; so does close()."""
        self.out.write("one\n")
        self.out.flush()
        self.assertEqual(self.written(), "one\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.out.write("two\n")
        self.out.close()
        self.assertEqual(self.written(), "one\ntwo\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reopen_writes_the_kept_lines_to_the_old_file(self) -> None:
        """Lines written before a reopen end in the file they were written to."""
        self.out.write("before\n")
        os.rename(self.path, self.path + ".1")
        self.out.reopen()
        self.out.write("after\n")
        self.clock.advance(0)
        self.assertEqual(self.written(self.path + ".1"), "before\n")
        self.assertEqual(self.written(), "after\n")

    def test_unwritable_log_counts_every_line_of_a_turn(self) -> None:
        """A turn's write that fails drops and counts each of its lines."""
        self.patch(sys, "__stderr__", io.StringIO())
        out = ReopenableFile("/dev/full", turns=self.clock)
        self.addCleanup(out.close)
        for _ in range(3):
            out.write("line\n")
        self.clock.advance(0)
        self.assertEqual(out.dropped, 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Recording:
    """A text file that notes each write (the rest goes to ``real``)."""

    def __init__(self, real: IO[str], writes: list[str]) -> None:
        self._real = real
        self._writes = writes

    def write(self, text: str) -> int:
        self._writes.append(text)
        return self._real.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


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
