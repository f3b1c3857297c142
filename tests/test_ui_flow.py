"""
The Flow page of the web UI and the flow fields of the job page in real headless
Chromium, against the real server process (see tests/test_ui_browser.py for the set-up).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from tests.serverprocess import wait_for
from tests.test_ui_browser import BASE, BrowserTestCase


def flow_path(key: str) -> str:
    """
    Return the API path of the flow ``key``, percent-encoded as one segment.
    """
    return "/flow/" + quote(key, safe="")


class FlowPageTests(BrowserTestCase):
    """
    List flow keys, edit, pause, resume and remove their limits in the browser.
    """

    def flow(self, key: str) -> dict[str, Any]:
        status, flow = self.server.request("GET", flow_path(key))
        self.assertEqual(status, 200, flow)
        result: dict[str, Any] = flow
        return result

    def put_flow(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        status, flow = self.server.request("PUT", flow_path(key), body)
        self.assertEqual(status, 200, flow)
        result: dict[str, Any] = flow
        return result

    def flow_row(self, page: Any, key: str) -> Any:
        return page.locator("tr[data-flow-key]").filter(
            has=page.locator("td.col-key", has_text=re.compile("^" + re.escape(key) + "$"))
        )

    def test_list_shows_keys_with_limits_running_and_waiting(self) -> None:
        """Keys set through the API are listed with their limits, jobs and a sparkline."""
        self.put_flow("[::1]:8000", {"parallelism": 2, "rate": 5, "period": 2})
        self.put_flow("slow", {"parallelism": 1})
        held = [
            self.server.push(self.worker.url + "/hold", flowKey="slow", name=f"held-{i}")
            for i in range(3)
        ]
        wait_for(lambda: self.worker.holding == 1, 10, "one held request")
        page = self.open("/flow")
        self.expect(page).to_have_title("Flow | HQ")
        self.expect(page.get_by_role("heading", name="Flow", exact=True)).to_be_visible()

        ipv6 = self.flow_row(page, "[::1]:8000")
        self.expect(ipv6.locator(".col-parallelism")).to_have_text("2")
        self.expect(ipv6.locator(".col-rate")).to_have_text("5 per 2 s")
        self.expect(ipv6.locator(".col-limit")).to_have_text("2")
        self.expect(ipv6.locator(".col-running")).to_have_text("0")
        self.expect(ipv6.locator(".col-waiting")).to_have_text("0")
        self.expect(ipv6.locator(".col-status")).to_have_text("active")
        self.expect(ipv6.locator("svg.sparkline polyline")).to_have_count(1)

        slow = self.flow_row(page, "slow")
        self.expect(slow.locator(".col-running")).to_have_text("1")
        self.expect(slow.locator(".col-waiting")).to_have_text("2")
        self.expect(slow.locator(".col-limit")).to_have_text("1")
        self.expect(slow.locator(".col-rate")).to_have_text("none")

        # The list follows the server without a reload.
        self.worker.release()
        for job_id in held:
            self.wait_status(job_id, "success")
        self.expect(slow.locator(".col-running")).to_have_text("0")
        self.expect(slow.locator(".col-waiting")).to_have_text("0")

    def test_edit_limits_in_the_form_changes_the_flow(self) -> None:
        """Edit fills the form from the row; Save sends PUT and GET /flow shows the change."""
        key = "reports/eu:443"
        self.put_flow(key, {"parallelism": 2})
        page = self.open("/flow")
        row = self.flow_row(page, key)
        row.get_by_role("button", name=f"Edit the limits of {key}").click()
        form = page.get_by_role("form", name="Edit limits")
        self.expect(form.get_by_label("Flow key")).to_have_value(key)
        self.expect(form.get_by_label("Parallelism")).to_have_value("2")
        self.expect(page).to_have_url(re.compile(r"/flow\?key=reports%2Feu%3A443$"))
        form.get_by_label("Parallelism").fill("3")
        form.get_by_label("Rate").fill("10")
        form.get_by_label("Period (seconds)").fill("0.5")
        form.get_by_role("button", name="Save limits").click()
        self.message(page, "success", f"Limits of {key} saved: parallelism 3, rate 10 per 0.5 s.")
        flow = self.flow(key)
        self.assertEqual(
            (flow["parallelism"], flow["rate"], flow["period"], flow["paused"]),
            (3, 10, 0.5, False),
        )
        (listed,) = [f for f in self.server.request("GET", "/flow")[1]["flows"] if f["key"] == key]
        self.assertEqual(listed["parallelism"], 3)
        self.expect(row.locator(".col-rate")).to_have_text("10 per 0.5 s")
        self.expect(row.locator(".col-parallelism")).to_have_text("3")

        # A key that is not listed yet gets limits by typing it.
        form.get_by_label("Flow key").fill("new.example:80")
        form.get_by_label("Parallelism").fill("1")
        form.get_by_label("Rate").fill("")
        form.get_by_label("Period (seconds)").fill("")
        form.get_by_label("Paused").check()
        form.get_by_role("button", name="Save limits").click()
        self.message(
            page, "success", "Limits of new.example:80 saved: parallelism 1, rate none, paused."
        )
        flow = self.flow("new.example:80")
        self.assertEqual((flow["parallelism"], flow["rate"], flow["paused"]), (1, 0, True))
        self.expect(self.flow_row(page, "new.example:80").locator(".col-status")).to_have_text(
            "paused"
        )

    def test_bad_value_shows_the_servers_error(self) -> None:
        """A negative parallelism or a zero period: the form shows the server's 422 message."""
        self.put_flow("api:443", {"parallelism": 2})
        page = self.open("/flow?key=api%3A443")
        form = page.get_by_role("form", name="Edit limits")
        self.expect(form.get_by_label("Parallelism")).to_have_value("2")
        form.get_by_label("Parallelism").fill("-1")
        form.get_by_role("button", name="Save limits").click()
        self.expect(form.locator(".alert-error")).to_contain_text(
            "'parallelism' must be a whole number from 0 (no limit)"
        )
        self.message(page, "error", "Could not save the limits of api:443")
        self.message(page, "error", "(422)")
        form.get_by_label("Parallelism").fill("2")
        form.get_by_label("Rate").fill("5")
        form.get_by_label("Period (seconds)").fill("0")
        form.get_by_role("button", name="Save limits").click()
        self.expect(form.locator(".alert-error")).to_contain_text(
            "'period' must be a number of seconds above 0"
        )
        flow = self.flow("api:443")
        self.assertEqual((flow["parallelism"], flow["rate"], flow["period"]), (2, 0, 1))

    def test_pause_resume_and_remove_from_the_page(self) -> None:
        """Pause holds the key's jobs, Resume lets them run, Remove limits (confirmed) clears."""
        key = "pausable"
        self.put_flow(key, {"parallelism": 4})
        page = self.open("/flow")
        row = self.flow_row(page, key)
        row.get_by_role("button", name=f"Pause {key}").click()
        self.message(page, "success", f"Flow {key} paused.")
        self.expect(row.locator(".col-status")).to_have_text("paused")
        self.assertTrue(self.flow(key)["paused"])

        job_id = self.server.push(self.worker.url + "/ok", flowKey=key)
        self.expect(row.locator(".col-waiting")).to_have_text("1")
        self.assertEqual(self.job(job_id)[1]["status"], "waiting")

        row.get_by_role("button", name=f"Resume {key}").click()
        self.message(page, "success", f"Flow {key} resumed.")
        self.expect(row.locator(".col-status")).to_have_text("active")
        self.assertFalse(self.flow(key)["paused"])
        self.wait_status(job_id, "success")
        self.expect(row.locator(".col-waiting")).to_have_text("0")

        row.get_by_role("button", name=f"Remove the limits of {key}").click()
        self.confirm(page, "Cancel")
        self.assertTrue(self.flow(key)["configured"])
        row.get_by_role("button", name=f"Remove the limits of {key}").click()
        self.confirm(page, "Remove limits")
        self.message(page, "success", f"Limits of {key} removed.")
        flow = self.flow(key)
        self.assertEqual((flow["configured"], flow["parallelism"]), (False, 0))
        self.expect(row).to_have_count(0)

    def test_nav_link_reaches_the_page(self) -> None:
        """The top bar's Flow link opens the page without a reload."""
        page = self.open("/")
        page.locator(".topnav").get_by_role("link", name="Flow").click()
        self.expect(page).to_have_url(self.server.base + BASE + "/flow")
        self.expect(page.get_by_text("No flow keys yet")).to_be_visible()


class JobPageFlowTests(BrowserTestCase):
    """
    The job page shows the job's flow key and its callbacks.
    """

    def test_job_page_links_flow_key_and_callback_job(self) -> None:
        """flowKey links to the Flow page; callbackUrl is shown; callbackJobId links the job."""
        callback_url = self.worker.url + "/callback"
        job_id = self.server.push(
            self.worker.url + "/ok", flowKey="reports", callbackUrl=callback_url
        )
        self.wait_status(job_id, "success")
        callback_id = wait_for(
            lambda: self.job(job_id)[1].get("callbackJobId"), 10, "the callback job"
        )
        page = self.open(f"/jobs/{job_id}")
        self.expect(page.locator('dd[data-field="callbackUrl"]')).to_have_text(callback_url)
        self.expect(page.locator('dd[data-field="failureCallbackUrl"]')).to_be_hidden()
        self.expect(page.locator('dd[data-field="flowKey"]')).to_have_text("reports")

        page.locator('dd[data-field="callbackJobId"] a').click()
        self.expect(page).to_have_url(re.compile(rf"/jobs/{callback_id}$"))
        self.expect(page.locator('dd[data-field="url"]')).to_have_text(callback_url)
        self.expect(page.locator('dd[data-field="callbackJobId"]')).to_be_hidden()
        page.go_back()

        page.locator('dd[data-field="flowKey"] a').click()
        self.expect(page).to_have_url(re.compile(r"/flow\?key=reports$"))
        form = page.get_by_role("form", name="Edit limits")
        self.expect(form.get_by_label("Flow key")).to_have_value("reports")
        self.expect(form.locator(".flow-current")).to_contain_text("reports: active")

    def test_job_page_default_flow_key_is_host_and_port(self) -> None:
        """A job pushed without flowKey shows its URL's host:port; no callback fields."""
        job_id = self.server.push(self.worker.url + "/ok")
        page = self.open(f"/jobs/{job_id}")
        host_port = self.worker.url.removeprefix("http://")
        self.expect(page.locator('dd[data-field="flowKey"]')).to_have_text(host_port)
        for field in ("callbackUrl", "failureCallbackUrl", "callbackJobId"):
            self.expect(page.locator(f'dd[data-field="{field}"]')).to_be_hidden()
