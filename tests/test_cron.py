"""
Cron expressions in time zones (hq.cron): parsing, next fire times, and the
daylight-saving rule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from twisted.trial.unittest import SynchronousTestCase

from hq.cron import CronError, CronRule

BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts: int, tz: ZoneInfo | None = None, fold: int = 0) -> int:
    """
    Return the ms of a wall time in ``tz`` (UTC by default).
    """
    when = datetime(*parts, tzinfo=tz or UTC, fold=fold)  # type: ignore[misc]
    return int(when.timestamp() * 1000)


def fires(rule: CronRule, after: int, count: int) -> list[int]:
    """
    Return the next ``count`` fire times after ``after``.
    """
    times = []
    for _ in range(count):
        nxt = rule.next_after(after)
        assert nxt is not None
        times.append(nxt)
        after = nxt
    return times


def berlin(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(BERLIN).isoformat()


class ParseTests(SynchronousTestCase):
    """
    CronRule.parse checks the expression and the zone, naming the field.
    """

    def test_five_and_six_fields(self) -> None:
        """Five fields are minutes first; six have the seconds first."""
        self.assertEqual(
            CronRule.parse("30 2 * * *").next_after(at(2026, 1, 1)), at(2026, 1, 1, 2, 30)
        )
        self.assertEqual(
            CronRule.parse("15 30 2 * * *").next_after(at(2026, 1, 1)), at(2026, 1, 1, 2, 30, 15)
        )

    def test_bad_expressions_name_cron(self) -> None:
        """Wrong field counts and out-of-range values fail naming 'cron'."""
        for bad in ("* * *", "61 * * * *", "* * * * * * *", "@daily", "*/0 * * * *", "x * * * *"):
            with self.assertRaises(CronError) as caught:
                CronRule.parse(bad)
            self.assertEqual(caught.exception.field, "cron", bad)
            self.assertIn("'cron'", caught.exception.message)

    def test_unknown_zone_names_timezone(self) -> None:
        """An unknown or malformed zone fails naming 'timezone'."""
        for bad in ("Mars/Base", "", "../etc/passwd", "Europe/"):
            with self.assertRaises(CronError) as caught:
                CronRule.parse("* * * * *", bad)
            self.assertEqual(caught.exception.field, "timezone", bad)

    def test_never_matching_expression_has_no_next(self) -> None:
        """February 31st never comes: no next fire."""
        self.assertIsNone(CronRule.parse("0 0 31 2 *").next_after(at(2026, 1, 1)))

    def test_zone_moves_the_fire(self) -> None:
        """A daily 09:00 in Berlin is 08:00 UTC in winter, 07:00 UTC in summer."""
        rule = CronRule.parse("0 9 * * *", "Europe/Berlin")
        self.assertEqual(rule.next_after(at(2026, 1, 10)), at(2026, 1, 10, 8))
        self.assertEqual(rule.next_after(at(2026, 7, 10)), at(2026, 7, 10, 7))

    def test_next_is_strictly_after(self) -> None:
        """A fire time itself is not its own next fire; ms are rounded to whole seconds."""
        rule = CronRule.parse("* * * * * *")
        self.assertEqual(rule.next_after(at(2026, 1, 1)), at(2026, 1, 1) + 1000)
        self.assertEqual(rule.next_after(at(2026, 1, 1) + 999), at(2026, 1, 1) + 1000)


class DaylightSavingTests(SynchronousTestCase):
    """
    Europe/Berlin: 2026-03-29 02:00 -> 03:00 (spring forward), 2026-10-25
    03:00 -> 02:00 (fall back).
    """

    def test_daily_0230_fires_at_0300_on_spring_forward_day(self) -> None:
        """02:30 does not exist on 29 March: the daily 02:30 fires once, at 03:00 CEST."""
        rule = CronRule.parse("30 2 * * *", "Europe/Berlin")
        times = fires(rule, at(2026, 3, 27, 12, tz=BERLIN), 4)
        self.assertEqual(
            [berlin(t) for t in times],
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ],
        )

    def test_daily_0230_fires_once_on_fall_back_day(self) -> None:
        """02:30 happens twice on 25 October: the daily 02:30 fires the first time only."""
        rule = CronRule.parse("30 2 * * *", "Europe/Berlin")
        times = fires(rule, at(2026, 10, 24, 12, tz=BERLIN), 3)
        self.assertEqual(
            [berlin(t) for t in times],
            [
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
                "2026-10-27T02:30:00+01:00",
            ],
        )

    def test_every_second_keeps_pace_through_fall_back(self) -> None:
        """Every second stays every second while 02:00-03:00 repeats: 3600 s apart = 1 h."""
        rule = CronRule.parse("* * * * * *", "Europe/Berlin")
        start = at(2026, 10, 25, 0, 59, 55)  # 02:59:55 CEST
        times = fires(rule, start, 10)
        self.assertEqual(times, [start + 1000 * n for n in range(1, 11)])
        self.assertEqual(berlin(times[5]), "2026-10-25T02:00:01+01:00")

    def test_every_second_skips_the_missing_hour(self) -> None:
        """On spring-forward day every second goes from 01:59:59 CET to 03:00:00 CEST: 1 s."""
        rule = CronRule.parse("* * * * * *", "Europe/Berlin")
        start = at(2026, 3, 29, 0, 59, 58)
        self.assertEqual(fires(rule, start, 3), [start + 1000, start + 2000, start + 3000])

    def test_hourly_fires_each_real_hour_on_fall_back_day(self) -> None:
        """An hourly schedule fires at 02:00 CEST and again at 02:00 CET."""
        rule = CronRule.parse("0 * * * *", "Europe/Berlin")
        times = fires(rule, at(2026, 10, 25, 0, 30, tz=BERLIN), 4)
        self.assertEqual(
            [berlin(t) for t in times],
            [
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
        )

    def test_several_times_in_the_gap_fire_once(self) -> None:
        """Every 15 minutes of hour 2 on spring-forward day: one fire at 03:00."""
        rule = CronRule.parse("*/15 2 * * *", "Europe/Berlin")
        times = fires(rule, at(2026, 3, 29, 1, tz=BERLIN), 2)
        self.assertEqual(
            [berlin(t) for t in times],
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"],
        )
