"""
Cron expressions in a time zone: parsing and the next fire time (SPEC §14).

Pure: no clock, no I/O. The fields are croniter's (5 fields, or 6 with the
seconds first); the time zones are IANA names from :mod:`zoneinfo` (the
``tzdata`` package supplies them where the system has none).

Daylight-saving changes follow Vixie/cronie cron (docs/schedules.md):

- An expression whose hour field is ``*`` runs by the clock on the wall as it
  passes: wall times that a change skips do not happen, and wall times that
  happen twice fire twice (an hourly or every-second schedule keeps its pace).
- Any other expression (a fixed hour: ``30 2 * * *``) fires once per wall
  time: a time skipped by the clock moving forward fires at the moment the
  clock jumps (02:30 on the spring-forward day fires at 03:00), and a time
  that happens twice fires the first time only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

#: Candidate wall times looked at for one next fire before giving up (a
#: clock change skips at most a few hours: 3 hours of seconds fit).
_MAX_CANDIDATES = 20_000
#: The longest stretch a daylight-saving change repeats, seconds.
_MAX_SHIFT = 3 * 3600


class CronError(ValueError):
    """
    A cron expression or time zone that cannot be used; ``field`` names it
    (``cron`` or ``timezone``) and the message says why, for a person.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def zone(name: str) -> ZoneInfo:
    """
    Return the IANA time zone ``name``.

    :raises CronError: naming ``timezone`` when there is no such zone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(
            "timezone",
            f"'timezone' must be an IANA time zone name (UTC, Europe/Berlin), not {name[:60]!r}",
        ) from None


def _offset(tz: ZoneInfo, t: int) -> timedelta:
    offset = datetime.fromtimestamp(t, UTC).astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def _wall(tz: ZoneInfo, t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC).astimezone(tz).replace(tzinfo=None)


def _instant(tz: ZoneInfo, wall: datetime, fold: int) -> int:
    return int(wall.replace(tzinfo=tz, fold=fold).timestamp())


def _change_at(tz: ZoneInfo, low: int, high: int) -> int:
    """
    Return the first second in ``(low, high]`` whose offset differs from ``low``'s.
    """
    before = _offset(tz, low)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(tz, middle) == before:
            low = middle
        else:
            high = middle
    return high


@functools.lru_cache(maxsize=4096)
def _iterator(expression: str) -> croniter:
    # Parsing an expression costs five times a step: each is parsed once and
    # its iterator moved to where it is needed (on the reactor thread only).
    return croniter(expression, datetime(2000, 1, 1), second_at_beginning=True, ret_type=datetime)


@functools.lru_cache(maxsize=4096)
def cached_rule(expression: str, timezone: str) -> CronRule:
    """
    Return :meth:`CronRule.parse` of ``expression`` in ``timezone``, parsed once.

    :raises CronError: as :meth:`CronRule.parse` (not cached).
    """
    return CronRule.parse(expression, timezone)


@attrs.frozen
class CronRule:
    """
    A checked cron expression in a time zone. Make one with :meth:`parse`.
    """

    expression: str
    timezone: str
    #: The hour field is ``*``: the rule runs by the passing wall clock (see the module).
    every_hour: bool

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> CronRule:
        """
        Return the rule of ``expression`` (5 fields, or 6 with seconds first)
        in the IANA zone ``timezone``.

        :raises CronError: naming ``cron`` or ``timezone``.
        """
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise CronError(
                "cron",
                "'cron' must have 5 fields (minute hour day-of-month month day-of-week) or 6 "
                f"(seconds first), not {len(fields)}: {expression[:80]!r}",
            )
        zone(timezone)
        normal = " ".join(fields)
        try:
            _iterator(normal)
        except (CroniterError, ValueError, KeyError, IndexError) as e:
            message = f"'cron' is not a valid cron expression {normal!r}: {e}"
            raise CronError("cron", message) from None
        hour = fields[2] if len(fields) == 6 else fields[1]
        return cls(expression=normal, timezone=timezone, every_hour=hour == "*")

    def next_after(self, after_ms: int) -> int | None:
        """
        Return the first fire time after ``after_ms`` (ms since the epoch; the
        result is a whole second), or ``None`` when the expression never
        matches again (``0 0 31 2 *``).
        """
        tz = zone(self.timezone)
        after = after_ms // 1000
        best = self._first_after(tz, after)
        if self.every_hour:
            # In the first pass of a repeated stretch, the second pass (later
            # in time, earlier on the wall) may hold an earlier fire.
            shifted = _offset(tz, after + _MAX_SHIFT)
            if shifted < _offset(tz, after):
                change = _change_at(tz, after, after + _MAX_SHIFT)
                start = _wall(tz, change)
                end = start + (_offset(tz, after) - shifted)
                candidate = self._candidates(start - timedelta(seconds=1))
                wall = next(candidate, None)
                if wall is not None and wall < end:
                    second_pass = _instant(tz, wall, 1)
                    if best is None or second_pass < best:
                        best = second_pass
        return None if best is None else best * 1000

    def _candidates(self, wall: datetime) -> Iterator[datetime]:
        """
        Yield the wall times the expression matches after ``wall``, in order.
        """
        it = _iterator(self.expression)
        it.set_current(wall, force=True)
        try:
            for _ in range(_MAX_CANDIDATES):
                yield it.get_next(datetime)
        except (CroniterBadDateError, CroniterBadCronError):
            return

    def _first_after(self, tz: ZoneInfo, after: int) -> int | None:
        for wall in self._candidates(_wall(tz, after)):
            for instant in self._instants(tz, wall):
                if instant > after:
                    return instant
        return None

    def _instants(self, tz: ZoneInfo, wall: datetime) -> list[int]:
        """
        Return the instants (Unix seconds, ascending) at which the wall time
        ``wall`` fires.
        """
        first, second = _instant(tz, wall, 0), _instant(tz, wall, 1)
        if first == second:
            return [first]
        if _wall(tz, first) != wall:
            # Skipped by the clock moving forward (``second < first`` here).
            return [] if self.every_hour else [_change_at(tz, second, first)]
        # Happens twice: ``first`` is the earlier instant.
        return [first, second] if self.every_hour else [first]
