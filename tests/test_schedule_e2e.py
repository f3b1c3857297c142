"""
Schedules end to end (SPEC §14): the real server process, a worker on
127.0.0.1, an every-second schedule, and kill -9 with the schedule running.

Fire times are read from the stopped server's database (the ``fire_at`` of
each job a fire made), so the lateness measured is exact.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import time

from twisted.trial.unittest import SynchronousTestCase

from hq.ids import id_to_ms
from tests.serverprocess import RecordingWorker, ServerProcess, report, wait_for


def fires(data_dir: str, schedule_id: str) -> list[tuple[int, int]]:
    """
    Return ``(fire time, job creation time)`` of the schedule's jobs, by fire time.
    """
    conn = sqlite3.connect(os.path.join(data_dir, "hq.sqlite3"))
    try:
        rows = conn.execute(
            "SELECT fire_at, id FROM jobs WHERE schedule_id = ? ORDER BY fire_at",
            (int(schedule_id),),
        ).fetchall()
    finally:
        conn.close()
    return [(fire_at, id_to_ms(job_id)) for fire_at, job_id in rows]


class ScheduleProcessTests(SynchronousTestCase):
    """
    ``hq serve`` with a ``* * * * * *`` schedule.
    """

    def setUp(self) -> None:
        self.worker = RecordingWorker()
        self.addCleanup(self.worker.close)
        self.server = ServerProcess(self.mktemp())
        self.addCleanup(self.server.stop)
        self.server.start()
        self.data_dir = os.path.join(self.server.directory, "data")

    def add_every_second(self) -> str:
        status, schedule = self.server.request(
            "POST",
            "/schedule",
            {"name": "tick", "cron": "* * * * * *", "job": {"url": self.worker.url + "/tick"}},
        )
        self.assertEqual(status, 200, schedule)
        return str(schedule["id"])

    def test_every_second_schedule_fires_each_second_within_one_second(self) -> None:
        """About 3 s of '* * * * * *': one job per second, each made within 1 s of its time."""
        schedule_id = self.add_every_second()
        time.sleep(3.6)
        status, paused = self.server.request("POST", f"/schedule/{schedule_id}/pause")
        self.assertEqual(status, 200)
        wait_for(lambda: len(self.worker.received) >= 3, 10, "the jobs to be delivered")
        self.server.stop()
        fired = fires(self.data_dir, schedule_id)
        self.assertGreaterEqual(len(fired), 3)
        times = [fire_at for fire_at, _ in fired]
        self.assertEqual(times, list(range(times[0], times[0] + 1000 * len(times), 1000)))
        late = sorted(created - fire_at for fire_at, created in fired)
        self.assertTrue(all(0 <= ms < 1000 for ms in late), late)
        self.assertEqual(id_to_ms(int(paused["lastJobId"])), fired[-1][1])
        report(
            "schedule_every_second",
            fires=len(late),
            lateness_p50_ms=statistics.median(late),
            lateness_max_ms=late[-1],
        )

    def test_kill_9_and_restart_makes_one_catch_up_fire(self) -> None:
        """Killed with the schedule running, down 4 s: one catch-up job, then one per second."""
        schedule_id = self.add_every_second()
        time.sleep(2.2)
        self.server.kill()
        killed_at = int(time.time() * 1000)
        before = fires(self.data_dir, schedule_id)
        self.assertGreaterEqual(len(before), 1)
        time.sleep(4)
        self.server.start()
        restarted_at = int(time.time() * 1000)
        time.sleep(2.5)
        self.server.stop()
        after = [f for f in fires(self.data_dir, schedule_id) if f[1] > killed_at]
        self.assertEqual(fires(self.data_dir, schedule_id)[: len(before)], before)
        # The catch-up: the first second missed, created at the restart.
        catch_up_time, catch_up_made = after[0]
        self.assertEqual(catch_up_time, before[-1][0] + 1000)
        self.assertGreaterEqual(catch_up_made, restarted_at - 2000)
        # Then the rhythm, from the first second after the moment of the catch-up (which
        # may be a few ms before its job is stored): no other missed second is fired.
        rhythm = [fire_at for fire_at, _ in after[1:]]
        self.assertGreaterEqual(len(rhythm), 1)
        self.assertGreater(rhythm[0], catch_up_made - 1000)
        self.assertLessEqual(rhythm[0] - catch_up_made, 1000)
        self.assertEqual(rhythm, list(range(rhythm[0], rhythm[0] + 1000 * len(rhythm), 1000)))
        self.assertEqual(self.server.log_text().count("one catch-up job"), 1)
