"""
Where the ``hq`` commands write: results to stdout, ``error: ...`` and notes to stderr,
and a progress bar on stderr for long pushes.
"""

from __future__ import annotations

from typing import IO

import attrs


@attrs.frozen
class Output:
    """
    The two output streams of a command, and what they are connected to.

    ``colour`` turns on status colours on stdout; ``err_is_tty`` and ``out_is_tty`` say
    whether stderr and stdout are terminals (a progress bar is drawn only on a terminal).
    Every write is flushed, so each line shows as soon as it is done.
    """

    out: IO[str]
    err: IO[str]
    colour: bool = False
    out_is_tty: bool = False
    err_is_tty: bool = False

    def line(self, text: str = "") -> None:
        """
        Write ``text`` and a newline to stdout.
        """
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, message: str) -> None:
        """
        Write ``error: <message>`` to stderr.
        """
        self.note(f"error: {message}")

    def note(self, message: str) -> None:
        """
        Write ``message`` and a newline to stderr.
        """
        self.err.write(message + "\n")
        self.err.flush()


class ProgressBar:
    """
    A one-line progress bar on stderr: ``pushing [#####-----]  512/1000``.

    When stdout is the same terminal, :meth:`line` clears the bar, writes the line on stdout
    and draws the bar again, so results and the bar do not mix.
    """

    WIDTH = 30

    def __init__(self, output: Output, total: int, label: str = "pushing") -> None:
        self._output = output
        self._total = max(total, 1)
        self._label = label
        self._done = 0
        self._drawn = -1

    def _draw(self) -> None:
        filled = self.WIDTH * self._done // self._total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        count = f"{self._done}/{self._total}"
        self._output.err.write(f"\r{self._label} [{bar}]  {count}\x1b[K")
        self._output.err.flush()
        self._drawn = self._done

    def _clear(self) -> None:
        self._output.err.write("\r\x1b[K")
        self._output.err.flush()

    def line(self, text: str) -> None:
        """
        Write ``text`` on stdout and count one more item done.
        """
        self._done += 1
        if self._output.out_is_tty:
            self._clear()
            self._output.line(text)
            self._draw()
            return
        self._output.line(text)
        # Redraw only when the bar or the last item changes: thousands of small writes
        # to a terminal are slower than the pushes.
        step = max(1, self._total // 200)
        if self._done - self._drawn >= step or self._done == self._total:
            self._draw()

    def start(self) -> None:
        """
        Draw the empty bar.
        """
        self._draw()

    def finish(self) -> None:
        """
        Remove the bar (the results stay on stdout).
        """
        self._clear()
