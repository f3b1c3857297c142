"""
Tests for hq.logs: log files that fail must not stop the server.
"""

from __future__ import annotations

import http.client
import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from hq.logs import ReopenableFile
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
