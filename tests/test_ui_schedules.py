"""
The Schedules page of the web UI in real headless Chromium, against the real server
process (see tests/test_ui_browser.py for the set-up).
"""

from __future__ import annotations

import re

from tests.serverprocess import wait_for
from tests.test_ui_browser import BASE, BrowserTestCase


class SchedulesPageTests(BrowserTestCase):
    """
    Add, explain, pause, resume and delete schedules in the browser.
    """

    def test_add_explains_the_cron_and_lists_the_schedule(self) -> None:
        """The form explains the cron in words; the new schedule is listed with its next run."""
        page = self.open("/schedules")
        self.expect(page.get_by_role("heading", name="Schedules", exact=True)).to_be_visible()
        explained = page.locator('[data-testid="cron-explained"]')
        page.get_by_label("Name").fill("nightly")
        page.get_by_label("Cron").fill("30 2 * * *")
        page.get_by_label("Time zone").fill("Europe/Berlin")
        self.expect(explained).to_have_text("Runs every day at 02:30 Europe/Berlin.")
        page.get_by_label("Cron").fill("0 9 * * 1-5")
        self.expect(explained).to_have_text(
            "Runs every weekday (Monday to Friday) at 09:00 Europe/Berlin."
        )
        page.get_by_label("Cron").fill("*/10 * * * * *")
        self.expect(explained).to_have_text("Runs every 10 seconds.")
        page.get_by_label("Cron").fill("5 4 L * *")
        self.expect(explained).to_have_text("Runs at the times “5 4 L * *” names.")
        page.get_by_label("Cron").fill("30 2 * * *")
        page.get_by_label("Job URL").fill(self.worker.url + "/nightly")
        page.get_by_label("Payload").fill('{"report": "daily"}')
        page.get_by_role("button", name="Add schedule").click()
        self.message(page, "success", "Schedule nightly added: every day at 02:30 Europe/Berlin.")
        _, listed = self.server.request("GET", "/schedule")
        (schedule,) = listed["schedules"]
        self.assertEqual(schedule["job"]["payload"], {"report": "daily"})
        row = page.locator(f'tr[data-schedule-id="{schedule["id"]}"]')
        self.expect(row).to_contain_text("every day at 02:30 Europe/Berlin")
        self.expect(row).to_contain_text("30 2 * * * · Europe/Berlin")
        # The next run (02:30 Berlin) is hours away, or minutes in the hour before it.
        self.expect(row).to_contain_text(re.compile(r"in \d+ (h|min)"))
        self.expect(row).to_contain_text("active")

    def test_bad_cron_shows_the_servers_error(self) -> None:
        """A cron the server refuses: the form shows its 422 message naming 'cron'."""
        page = self.open("/schedules")
        page.get_by_label("Cron").fill("61 * * * *")
        page.get_by_label("Job URL").fill(self.worker.url + "/x")
        page.get_by_role("button", name="Add schedule").click()
        self.expect(page.locator(".schedule-form .alert-error")).to_contain_text("'cron'")
        self.message(page, "error", "Could not add the schedule")
        self.assertEqual(self.server.request("GET", "/schedule")[1], {"schedules": []})

    def test_fires_link_the_last_job_then_pause_resume_and_delete(self) -> None:
        """An every-second schedule links its last job; pause, resume, delete (confirmed)."""
        status, schedule = self.server.request(
            "POST",
            "/schedule",
            {"name": "tick", "cron": "* * * * * *", "job": {"url": self.worker.url + "/tick"}},
        )
        self.assertEqual(status, 200)
        schedule_id = schedule["id"]
        page = self.open("/schedules")
        row = page.locator(f'tr[data-schedule-id="{schedule_id}"]')
        self.expect(row).to_contain_text("every second")
        link = row.locator("a.job-link")
        self.expect(link).to_be_visible()

        row.get_by_role("button", name="Pause schedule tick").click()
        self.message(page, "success", "Schedule tick paused.")
        self.expect(row).to_contain_text("paused")
        self.assertTrue(self.server.request("GET", f"/schedule/{schedule_id}")[1]["paused"])

        row.get_by_role("button", name="Resume schedule tick").click()
        self.message(page, "success", "Schedule tick resumed.")
        self.expect(row).to_contain_text("active")

        last_job = wait_for(
            lambda: self.server.request("GET", f"/schedule/{schedule_id}")[1]["lastJobId"],
            10,
            "a fire",
        )
        row.locator("a.job-link").click()
        self.expect(page).to_have_url(re.compile(r"/jobs/\d+$"))
        self.expect(page.locator('dd[data-field="scheduleId"]')).to_have_text(schedule_id)
        self.assertTrue(last_job)

        page.goto(self.server.base + BASE + "/schedules")
        row = page.locator(f'tr[data-schedule-id="{schedule_id}"]')
        row.get_by_role("button", name="Delete schedule tick").click()
        self.confirm(page, "Cancel")
        self.expect(row).to_be_visible()
        row.get_by_role("button", name="Delete schedule tick").click()
        self.confirm(page, "Delete")
        self.message(page, "success", "Schedule tick deleted.")
        self.expect(row).to_have_count(0)
        self.assertEqual(self.server.request("GET", f"/schedule/{schedule_id}")[0], 404)

    def test_nav_link_reaches_the_page(self) -> None:
        """The top bar's Schedules link opens the page without a reload."""
        page = self.open("/")
        page.locator(".topnav").get_by_role("link", name="Schedules").click()
        self.expect(page).to_have_url(self.server.base + BASE + "/schedules")
        self.expect(page.get_by_text("No schedules yet")).to_be_visible()
