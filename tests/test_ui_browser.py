"""
End-to-end tests of the web UI in real headless Chromium, against the real server process.

Chromium is Debian's ``chromium`` package (or ``HQ_CHROMIUM``), driven by Playwright
for Python. Without Chromium the tests are skipped, unless ``CI=true``: then they
must run. Each test starts its own server (at a two-segment basename with a
trailing slash) and browser, and stops both in its cleanup.

``python -m tests.test_ui_browser --screenshot docs/ui-dashboard.png`` saves the
dashboard screenshot used by the docs.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import RecordingWorker, ServerProcess, wait_for

CHROMIUM = os.environ.get("HQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: A basename with two segments and a trailing slash: the hardest case.
BASENAME = "/admin/hq/"
BASE = "/admin/hq"
#: A URL where nothing listens: jobs sent there fail at once.
REFUSED_URL = "http://127.0.0.1:1/"
#: How long to wait for the page to show something (it refreshes every 2 s).
TIMEOUT_MS = 10_000


def skip_reason() -> str | None:
    """
    Return why the browser tests cannot run here, or None; on CI they always run.
    """
    if os.environ.get("CI") == "true":
        return None
    if not os.path.exists(CHROMIUM):
        return (
            f"Chromium is not installed at {CHROMIUM} (apt-get install chromium); "
            "with CI=true these tests must run"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    return None


class Browser:
    """
    A Playwright-driven headless Chromium.
    """

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self.errors: list[str] = []
        self.alerts: list[str] = []
        self._playwright = sync_playwright().start()
        try:
            self.browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS
            )
        except Exception:
            self._playwright.stop()
            raise

    def page(self, **options: Any) -> Any:
        """
        Return a new page in a fresh context (no shared storage).

        Script errors go to ``self.errors`` and alert/confirm texts to ``self.alerts``.
        """
        context = self.browser.new_context(**options)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._on_dialog)
        return page

    def _on_dialog(self, dialog: Any) -> None:
        self.alerts.append(dialog.message)
        dialog.dismiss()

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()


class BrowserTests(SynchronousTestCase):
    """
    What an operator does in the browser.
    """

    def setUp(self) -> None:
        reason = skip_reason()
        if reason:
            raise SkipTest(reason)
        from playwright.sync_api import expect

        expect.set_options(timeout=TIMEOUT_MS)
        self.expect = expect
        self.worker = RecordingWorker()
        self.addCleanup(self.worker.close)
        self.server = ServerProcess(
            os.path.abspath(self.mktemp()), ui_basename=BASENAME, max_workers=4, shutdown_timeout=0
        )
        self.addCleanup(self.server.stop)
        self.server.start()
        self.browser = Browser()
        self.addCleanup(self.browser.close)
        self.addCleanup(lambda: self.assertEqual(self.browser.errors, [], "errors in the page"))

    def open(self, path: str = "/", **options: Any) -> Any:
        """
        Open ``path`` below the UI basename in a new page.
        """
        page = self.browser.page(**options)
        page.goto(self.server.base + BASE + path)
        return page

    def row(self, page: Any, job_id: str) -> Any:
        return page.locator(f'tr[data-job-id="{job_id}"]')

    def job(self, job_id: str) -> tuple[int, Any]:
        return self.server.request("GET", f"/job/{job_id}")

    def wait_status(self, job_id: str, *statuses: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            code, job = self.job(job_id)
            return job if code == 200 and job["status"] in statuses else None

        result: dict[str, Any] = wait_for(check, 15, f"job {job_id} to be {statuses}")
        return result

    def confirm(self, page: Any, button: str) -> None:
        """
        Click ``button`` in the open confirmation dialog.
        """
        dialog = page.locator("dialog[open]")
        self.expect(dialog).to_be_visible()
        dialog.get_by_role("button", name=button, exact=True).click()
        self.expect(dialog).to_have_count(0)

    def message(self, page: Any, kind: str, text: str) -> None:
        """
        Assert a visible message of ``kind`` (success or error) containing ``text``.
        """
        self.expect(page.locator(f".toast-{kind}").filter(has_text=text)).to_be_visible()

    def test_pushed_jobs_appear_live_with_stats_and_chart(self) -> None:
        """A job pushed while the dashboard is open appears and finishes without a reload."""
        page = self.open()
        self.expect(page).to_have_title("Dashboard | HQ")
        self.expect(page.locator(".empty")).to_have_text("No jobs found.")
        job_id = self.server.push(self.worker.url + "/ok", name="live-job")
        row = self.row(page, job_id)
        self.expect(row.locator(".col-name")).to_have_text("live-job")
        self.expect(row.locator(".col-url")).to_have_text(self.worker.url + "/ok")
        self.expect(row.locator(".col-status")).to_have_text("success")
        self.expect(row.locator(".col-status .badge")).to_have_class(re.compile("status-success"))
        self.expect(row.locator(".col-finished")).not_to_be_empty()
        self.expect(row.locator(".col-duration")).to_have_text(re.compile(r"\d"))
        stored = page.get_by_role("region", name="Stored jobs")
        self.expect(stored.locator(".card-value")).to_have_text("1")
        running = page.get_by_role("region", name="Jobs running")
        self.expect(running.locator(".card-note").first).to_have_text(
            "Concurrency limit: 4 (1 \N{MULTIPLICATION SIGN} 4)"
        )
        queue = page.get_by_role("region", name="Jobs in queue")
        self.expect(queue.locator(".card-note").first).to_contain_text("Queue usage: 0%")
        self.expect(page.locator(".chart .bar-success")).to_have_count(1)
        self.expect(page.locator(".chart-summary")).to_contain_text("1 succeeded")

    def test_rows_update_in_place(self) -> None:
        """A refresh updates the existing row element instead of rebuilding the table."""
        job_id = self.server.push(self.worker.url + "/hold", name="in-place")
        page = self.open()
        row = self.row(page, job_id)
        self.expect(row.locator(".col-status")).to_have_text("running")
        row.evaluate("tr => { tr.dataset.marker = 'kept'; }")
        self.server.request("POST", f"/job/{job_id}/stop")
        self.expect(row.locator(".col-status")).to_have_text("canceled")
        self.assertEqual(row.get_attribute("data-marker"), "kept")

    def test_search_and_status_filter_are_in_the_url(self) -> None:
        """Search and status filter narrow the list and live in a bookmarkable URL."""
        alpha = self.server.push(self.worker.url + "/ok", name="alpha-task")
        beta = self.server.push(self.worker.url + "/ok", name="beta-task")
        broken = self.server.push(REFUSED_URL, name="alpha-broken")
        self.wait_status(broken, "failure")
        page = self.open()
        self.expect(page.locator("tbody tr")).to_have_count(3)
        page.get_by_label("Search jobs").fill("alpha")
        self.expect(page.locator("tbody tr")).to_have_count(2)
        self.expect(self.row(page, beta)).to_have_count(0)
        self.expect(page).to_have_url(re.compile(r"\?term=alpha$"))
        page.get_by_label("Filter by status").select_option("failure")
        self.expect(page.locator("tbody tr")).to_have_count(1)
        self.expect(self.row(page, broken)).to_have_count(1)
        self.expect(page).to_have_url(re.compile(r"\?term=alpha&status=failure$"))

        shared = self.open("/?term=alpha&status=success")
        self.expect(shared.get_by_label("Search jobs")).to_have_value("alpha")
        self.expect(shared.get_by_label("Filter by status")).to_have_value("success")
        self.expect(shared.locator("tbody tr")).to_have_count(1)
        self.expect(self.row(shared, alpha)).to_have_count(1)

        page.get_by_label("Search jobs").fill("(")
        self.expect(page.locator(".panel .alert-error")).to_contain_text("Invalid search")

    def test_paging_next_and_previous(self) -> None:
        """The list shows 20 jobs a page; Next shows older jobs, Previous comes back."""
        ids = [self.server.push(REFUSED_URL, name=f"paging-{i:02d}") for i in range(25)]
        self.server.push(REFUSED_URL, name="other")
        page = self.open("/?term=paging-")
        rows = page.locator("tbody tr")
        self.expect(rows).to_have_count(20)
        self.expect(rows.first).to_have_attribute("data-job-id", ids[-1])
        previous = page.get_by_role("button", name="← Previous")
        self.expect(previous).to_be_disabled()
        page.get_by_role("button", name="Next →").click()
        self.expect(rows).to_have_count(5)
        self.expect(rows.first).to_have_attribute("data-job-id", ids[4])
        self.expect(rows.last).to_have_attribute("data-job-id", ids[0])
        self.expect(page).to_have_url(re.compile(rf"term=paging-&begin={ids[4]}$"))
        self.expect(page.get_by_role("button", name="Next →")).to_be_disabled()
        previous.click()
        self.expect(rows).to_have_count(20)
        self.expect(rows.first).to_have_attribute("data-job-id", ids[-1])
        self.expect(page).to_have_url(re.compile(r"\?term=paging-$"))
        # The browser's Back button returns to the older page.
        page.go_back()
        self.expect(rows).to_have_count(5)

    def test_detail_shows_every_field_readably(self) -> None:
        """The detail page shows the fields and pretty-prints payload, headers and output."""
        job_id = self.server.push(
            self.worker.url + "/ok",
            name="detailed",
            comment="a comment",
            payload={"user": {"id": 7}, "tags": ["a", "b"]},
            headers={"X-Trace": "t-1"},
            timeout=30,
        )
        self.wait_status(job_id, "success")
        page = self.open()
        self.row(page, job_id).get_by_role("link", name=job_id).click()
        self.expect(page).to_have_url(self.server.base + f"{BASE}/jobs/{job_id}")
        self.expect(page).to_have_title(f"Job {job_id} | HQ")
        fields = {
            "id": job_id,
            "name": "detailed",
            "comment": "a comment",
            "url": self.worker.url + "/ok",
            "status": "success",
            "statusCode": "200",
            "timeout": "30 s",
            "success": "yes",
        }
        for field, text in fields.items():
            self.expect(page.locator(f'dd[data-field="{field}"]')).to_have_text(text)
        self.expect(page.locator('pre[data-block="payload"]')).to_have_text(
            '{\n  "user": {\n    "id": 7\n  },\n  "tags": [\n    "a",\n    "b"\n  ]\n}'
        )
        self.expect(page.locator('pre[data-block="headers"]')).to_have_text(
            '{\n  "X-Trace": "t-1"\n}'
        )
        self.expect(page.locator('pre[data-block="output"]')).to_have_text('{\n  "ok": true\n}')
        # Only the actions a finished job allows.
        actions = page.locator(".detail-actions")
        self.expect(actions.get_by_role("button")).to_have_text(
            ["Restart", "Restart as a new job", "Delete"]
        )

    def test_detail_is_live_while_the_job_runs(self) -> None:
        """The detail page of a running job follows it to its end without a reload."""
        job_id = self.server.push(self.worker.url + "/hold", name="slow")
        page = self.open(f"/jobs/{job_id}")
        self.expect(page.locator('dd[data-field="status"]')).to_have_text("running")
        self.expect(page.locator(".detail-actions").get_by_role("button")).to_have_text(["Stop"])
        self.worker.release()
        self.expect(page.locator('dd[data-field="status"]')).to_have_text("success")
        self.expect(page.locator('pre[data-block="output"]')).to_contain_text('"ok": true')

    def test_stop_a_running_job(self) -> None:
        """Stop on a running job's row asks first, then cancels it and says so."""
        job_id = self.server.push(self.worker.url + "/hold", name="to-stop")
        page = self.open()
        row = self.row(page, job_id)
        self.expect(row.locator(".col-status")).to_have_text("running")
        self.expect(row.get_by_role("button")).to_have_text(["Stop"])
        row.get_by_role("button", name=f"Stop job {job_id}").click()
        # Cancelling the dialog does nothing.
        self.confirm(page, "Cancel")
        self.assertEqual(self.job(job_id)[1]["status"], "running")
        row.get_by_role("button", name=f"Stop job {job_id}").click()
        self.confirm(page, "Stop")
        self.message(page, "success", f"Job {job_id} stopped.")
        self.expect(row.locator(".col-status")).to_have_text("canceled")
        self.expect(row.get_by_role("button")).to_have_text(["Restart", "Delete"])
        self.assertEqual(self.job(job_id)[1]["status"], "canceled")

    def test_restart_restart_as_new_job_and_delete(self) -> None:
        """From the detail page: restart in place, restart as a copy, then delete."""
        job_id = self.server.push(REFUSED_URL, name="again")
        self.wait_status(job_id, "failure")
        page = self.open(f"/jobs/{job_id}")
        actions = page.locator(".detail-actions")

        actions.get_by_role("button", name=f"Restart job {job_id}", exact=True).click()
        self.confirm(page, "Restart")
        self.message(page, "success", f"Job {job_id} restarted.")
        self.wait_status(job_id, "failure")

        count_before = len(self.server.jobs())
        actions.get_by_role("button", name=f"Restart job {job_id} as a new job").click()
        self.confirm(page, "Restart as a new job")
        self.message(page, "success", f"Job {job_id} restarted as new job")
        jobs = self.server.jobs()
        self.assertEqual(len(jobs), count_before + 1)
        new_id = max(jobs, key=lambda j: int(j["id"]))["id"]
        self.assertNotEqual(new_id, job_id)
        page.locator(".toast-success").get_by_role("link", name="Open").click()
        self.expect(page).to_have_url(re.compile(rf"/jobs/{new_id}$"))
        self.expect(page.locator('dd[data-field="name"]')).to_have_text("again")

        self.wait_status(new_id, "failure")
        page.locator(".detail-actions").get_by_role("button", name=f"Delete job {new_id}").click()
        self.confirm(page, "Delete")
        self.message(page, "success", f"Job {new_id} deleted.")
        self.expect(page).to_have_url(self.server.base + BASE + "/")
        self.assertEqual(self.job(new_id)[0], 404)
        self.assertEqual(self.job(job_id)[0], 200)

    def test_forbidden_actions_show_the_servers_error(self) -> None:
        """A stop that became a 409 and a delete that became a 404 show the server's message."""
        job_id = self.server.push(self.worker.url + "/hold", name="raced")
        page = self.open(f"/jobs/{job_id}")
        self.expect(page.locator('dd[data-field="status"]')).to_have_text("running")
        page.get_by_role("button", name=f"Stop job {job_id}").click()
        self.expect(page.locator("dialog[open]")).to_be_visible()
        # Someone else stops it while the dialog is open.
        self.server.request("POST", f"/job/{job_id}/stop")
        self.wait_status(job_id, "canceled")
        self.confirm(page, "Stop")
        _, error = self.server.request("POST", f"/job/{job_id}/stop")
        self.message(page, "error", f"Could not stop job {job_id}: {error['error']} (409)")

        self.expect(page.get_by_role("button", name=f"Delete job {job_id}")).to_be_visible()
        page.get_by_role("button", name=f"Delete job {job_id}").click()
        self.expect(page.locator("dialog[open]")).to_be_visible()
        self.server.request("DELETE", f"/job/{job_id}")
        self.confirm(page, "Delete")
        self.message(page, "error", f"The job '{job_id}' is not found (404)")
        self.expect(page.locator(".detail .alert-error")).to_have_text(
            f"The job '{job_id}' is not found"
        )

    def test_script_in_job_text_is_shown_not_run(self) -> None:
        """A job named <script> or carrying markup shows as text and runs nothing."""
        name = "<script>alert('name')</script><img src=x onerror=\"alert('img')\">"
        job_id = self.server.push(
            REFUSED_URL + "<script>alert('url')</script>",
            name=name,
            comment="<b>bold</b>",
            payload={"html": "<script>alert('payload')</script>"},
        )
        page = self.open()
        row = self.row(page, job_id)
        self.expect(row.locator(".col-name")).to_have_text(name)
        page.goto(self.server.base + f"{BASE}/jobs/{job_id}")
        self.expect(page.locator('dd[data-field="name"]')).to_have_text(name)
        self.expect(page.locator('dd[data-field="comment"]')).to_have_text("<b>bold</b>")
        self.expect(page.locator('pre[data-block="payload"]')).to_contain_text("<script>")
        self.expect(page.locator("main script, main img, main b")).to_have_count(0)
        self.assertEqual(self.browser.alerts, [])

    def test_basename_redirect_unknown_routes_and_api_root(self) -> None:
        """The basename without a slash redirects; unknown routes say so; GET / stays the API."""
        page = self.browser.page()
        page.goto(self.server.base + "/admin/hq?term=x")
        self.expect(page).to_have_url(self.server.base + "/admin/hq/?term=x")
        self.expect(page.get_by_label("Search jobs")).to_have_value("x")
        page.goto(self.server.base + "/admin/hq/no/such/page")
        self.expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
        page.get_by_role("link", name="Back to the dashboard").click()
        self.expect(page).to_have_url(self.server.base + "/admin/hq/")
        self.assertEqual(self.server.request("GET", "/")[1].keys(), {"version", "commitHash"})

    def test_dark_mode_toggle_and_narrow_screen(self) -> None:
        """The theme toggle switches and is remembered; a narrow screen stacks the rows."""
        self.server.push(REFUSED_URL, name="narrow")
        page = self.open(color_scheme="light", viewport={"width": 390, "height": 800})
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        page.get_by_role("button", name="Switch light/dark mode").click()
        self.expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        dark = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        self.assertNotEqual(dark, background)
        page.reload()
        self.expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        self.expect(page.locator("tbody tr")).to_have_count(1)
        self.expect(page.locator("table.jobs thead")).to_be_hidden()
        width = page.evaluate("() => document.documentElement.scrollWidth")
        self.assertLessEqual(width, 390)

        system_dark = self.open(color_scheme="dark")
        self.expect(system_dark.locator("tbody tr")).to_have_count(1)
        self.assertEqual(
            system_dark.evaluate("() => getComputedStyle(document.body).backgroundColor"), dark
        )


def save_screenshot(path: str, waves: int = 8) -> None:
    """
    Start a server, push jobs of mixed status in waves for a while (so the chart has
    history), and save a screenshot of its dashboard.
    """
    worker = RecordingWorker()
    server = ServerProcess(tempfile.mkdtemp(prefix="hq-screenshot-"), max_workers=2)
    server.start()
    browser = Browser()
    try:
        names = ["send-email", "resize-image", "sync-crm", "nightly-report", "webhook"]
        for wave in range(waves):
            for i in range(3 + (wave * 5) % 7):
                url = REFUSED_URL if (wave + i) % 6 == 5 else worker.url + "/work"
                server.push(url, name=names[(wave + i) % len(names)], payload={"n": i})
            time.sleep(5)
        for _ in range(4):
            server.push(worker.url + "/hold/export", name="export-archive")
        wait_for(lambda: worker.holding == 2, 20, "two running jobs")
        canceled = server.push(worker.url + "/hold/export", name="export-archive")
        server.request("POST", f"/job/{canceled}/stop")
        page = browser.page(viewport={"width": 1280, "height": 1000}, color_scheme="light")
        page.goto(server.base + "/ui/")
        page.locator("tbody tr").nth(9).wait_for()
        page.wait_for_timeout(2500)
        page.screenshot(path=path, full_page=False)
    finally:
        browser.close()
        worker.close()
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshot":
        save_screenshot(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.test_ui_browser --screenshot PATH")
