"""
How ``hq`` runs a client command: the reactor, the clock and the terminal, injectable.

:class:`CliRuntime` bundles them; :func:`hq.cli.run_cli` takes one, so tests replace the
reactor with ``StubTreq`` (see ``tests/test_cli.py``) and the wall clock with a fixed time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.python.failure import Failure

from hq.cli.terminal import Output
from hq.client import HQClient

#: A client command: what to do with a client and the output, returning the exit status.
Command = Callable[[HQClient, Output], Awaitable[int]]

#: Runs a command against the server at an address and returns its exit status.
Runner = Callable[[str, Callable[[HQClient], Awaitable[int]]], int]

#: The exit status when the user interrupts a command (128 + SIGINT, as shells do).
EXIT_INTERRUPTED = 130


def run_with_reactor(address: str, command: Callable[[HQClient], Awaitable[int]]) -> int:
    """
    Run ``command`` with a client for ``address`` on the global reactor and return its exit
    status; the reactor runs until the command is done.

    An interrupt (Ctrl-C) stops the reactor and gives :data:`EXIT_INTERRUPTED`. A bug in
    the command is raised again here, after the reactor has stopped, with its traceback.
    """
    from twisted.internet import reactor

    outcome: list[int | Failure] = []
    interrupted: list[bool] = []

    async def body() -> int:
        client = HQClient(address, reactor=reactor)  # type: ignore[arg-type]
        try:
            return await command(client)
        except BrokenPipeError:
            # `hq list | head`: the reader went away; stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        finally:
            await client.close()

    def on_shutdown() -> None:
        if not outcome:
            # Stopped from outside (Ctrl-C, SIGTERM) before the command was done.
            interrupted.append(True)

    def finish(result: int | Failure) -> None:
        outcome.append(result)
        if not interrupted:
            try:
                reactor.stop()  # type: ignore[attr-defined]
            except ReactorNotRunning:
                pass

    def start() -> None:
        Deferred.fromCoroutine(body()).addBoth(finish)

    reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)  # type: ignore[attr-defined]
    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if interrupted or not outcome:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, int)
    return result


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@attrs.frozen
class CliRuntime:
    """
    What client commands run on: ``run`` (the reactor, or a test's stub), ``now`` (for
    "3 minutes ago") and ``isatty`` (colours and the progress bar appear only on terminals).
    """

    run: Runner = run_with_reactor
    now: Callable[[], datetime] = _utc_now
    isatty: Callable[[IO[Any]], bool] = _isatty

    def output(self) -> Output:
        """
        Return the Output for the current ``sys.stdout`` and ``sys.stderr``; colours are on
        when stdout is a terminal and ``NO_COLOR`` is not set.
        """
        out, err = sys.stdout, sys.stderr
        out_is_tty = self.isatty(out)
        return Output(
            out=out,
            err=err,
            colour=out_is_tty and not os.environ.get("NO_COLOR"),
            out_is_tty=out_is_tty,
            err_is_tty=self.isatty(err),
        )
