"""
Job ids: the Go server's 64-bit layout, so ids stay compatible and sortable.

``id = (ms since 2019-01-01T00:00:00Z) << 22 | server_id << 12 | sequence``
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

#: 2019-01-01T00:00:00Z in milliseconds since the Unix epoch.
EPOCH_MS = 1_546_300_800_000

SERVER_ID_BITS = 10
SEQUENCE_BITS = 12
MAX_SERVER_ID = (1 << SERVER_ID_BITS) - 1
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
_TIME_SHIFT = SERVER_ID_BITS + SEQUENCE_BITS


def id_to_ms(job_id: int) -> int:
    """
    Return the creation time encoded in ``job_id``, in ms since the Unix epoch.
    """
    return (job_id >> _TIME_SHIFT) + EPOCH_MS


def now_ms(clock: IReactorTime) -> int:
    """
    Return ``clock``'s time in whole milliseconds since the Unix epoch (HQ's times).
    """
    return int(clock.seconds() * 1000)


def first_id_at(unix_ms: int) -> int:
    """
    Return the smallest id that can be generated at ``unix_ms`` (0 before the epoch).
    """
    return max(0, unix_ms - EPOCH_MS) << _TIME_SHIFT


@attrs.define
class IdGenerator:
    """
    Strictly increasing ids for one server.

    The time part never goes backwards: when the clock moves back (or was set
    back between two runs, see ``last_id``) the generator keeps counting from
    the last time it used, so an id is never reused. When the 4096 sequence
    numbers of one millisecond are used up it borrows the next millisecond
    instead of busy-waiting on the reactor thread.
    """

    _server_id: int
    _clock: IReactorTime
    _last_ms: int = 0
    _sequence: int = 0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self._server_id <= MAX_SERVER_ID:
            raise ValueError(f"server_id must be between 0 and {MAX_SERVER_ID}")

    def observe(self, job_id: int) -> None:
        """
        Make every later id greater than ``job_id`` (an id found in the store).

        The next id moves to the millisecond after ``job_id``'s, which is greater
        whatever server id and sequence ``job_id`` carries.
        """
        ms = (job_id >> _TIME_SHIFT) + 1
        if ms > self._last_ms:
            self._last_ms = ms
            self._sequence = -1

    def next_id(self) -> int:
        """
        Return a new id, greater than every id returned or observed before.
        """
        now = now_ms(self._clock) - EPOCH_MS
        if now > self._last_ms:
            self._last_ms = now
            self._sequence = 0
        else:
            self._sequence += 1
            if self._sequence > _SEQUENCE_MASK:
                self._last_ms += 1
                self._sequence = 0
        return (self._last_ms << _TIME_SHIFT) | (self._server_id << SEQUENCE_BITS) | self._sequence
