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

import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import RecordingWorker, ServerProcess, _QuietHTTPServer, wait_for

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


class FlakyWorker:
    """
    A worker on 127.0.0.1 that fails as each job's payload asks.

    The payload (a JSON object) may hold ``fail`` (how many of the job's requests
    fail, default 0), ``status`` (their status, default 500), ``error_output`` (their
    body), ``output`` (the body of the requests after them, default ``{"ok":true}``)
    and ``hold`` (those wait for :meth:`release`). Requests are counted by the job
    id HQ sends, so a restarted job goes on counting.
    """

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.gate = threading.Event()
        self._lock = threading.Lock()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body) if body else {}
                except ValueError:
                    payload = {}
                if not isinstance(payload, dict):
                    payload = {}
                with worker._lock:
                    job_id = self.headers.get("X-Hq-Job-Id", "")
                    worker.received[job_id] += 1
                    number = worker.received[job_id]
                if number <= int(payload.get("fail", 0)):
                    status = int(payload.get("status", 500))
                    answer = str(payload.get("error_output", "failed")).encode()
                else:
                    if payload.get("hold"):
                        worker.gate.wait(30)
                    status = 200
                    answer = str(payload.get("output", '{"ok":true}')).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class BrowserTestCase(SynchronousTestCase):
    """
    A real server process (with ``server_config``), a worker and a browser per test.
    """

    #: Config keys of the server, beside the basename and the worker limits.
    server_config: dict[str, Any] = {}

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
            os.path.abspath(self.mktemp()),
            ui_basename=BASENAME,
            max_workers=4,
            shutdown_timeout=0,
            **self.server_config,
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


class BrowserTests(BrowserTestCase):
    """
    What an operator does in the browser.
    """

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


#: Retries as SPEC §11 tests them: two more attempts, quickly.
RETRY_CONFIG = {"retries": 2, "retry_min_backoff": 0.2, "retry_max_backoff": 0.5}
#: Markup a worker might answer with: it must show as text and run nothing.
MARKUP = "<img src=x onerror=\"alert('attempt')\"><script>alert('output')</script>"


class RetryBrowserTests(BrowserTestCase):
    """
    Retries, the attempt timeline and the bulk actions, in the browser.
    """

    server_config = RETRY_CONFIG

    def setUp(self) -> None:
        super().setUp()
        self.flaky = FlakyWorker()
        self.addCleanup(self.flaky.close)

    def push_flaky(self, **fields: Any) -> str:
        """
        Push a job to the flaky worker; ``fields`` beside ``payload`` go to the push.
        """
        payload = fields.pop("payload", {})
        return self.server.push(self.flaky.url + "/work", payload=payload, **fields)

    def attempts(self, page: Any) -> Any:
        return page.locator(".timeline li.attempt[data-attempt]")

    def test_timeline_shows_each_attempt_live(self) -> None:
        """A job that fails twice then succeeds shows three attempts, live, with status codes."""
        long_error = MARKUP + "\n" + "\n".join(f"line {i}" for i in range(40))
        job_id = self.push_flaky(
            name="flaky",
            payload={
                "fail": 2,
                "status": 500,
                "error_output": long_error,
                "output": '{"ok":true,"attempt":3}',
                "hold": True,
            },
        )
        page = self.open(f"/jobs/{job_id}")
        # Two failed attempts are in the history; the third runs (held by the worker).
        self.expect(self.attempts(page)).to_have_count(2)
        self.expect(page.locator(".timeline .attempt-running")).to_contain_text("Attempt 3")
        self.expect(page.locator('dd[data-field="attempts"]')).to_have_text("attempt 3 of 3")
        self.expect(page.locator('dd[data-field="retries"]')).to_contain_text("2")
        self.expect(self.attempts(page).locator(".attempt-result")).to_have_text(
            ["HTTP 500", "HTTP 500"]
        )
        first = self.attempts(page).first
        self.expect(first.locator(".attempt-head time")).to_contain_text("started ")
        self.expect(first.locator(".attempt-duration")).to_contain_text("took ")
        # A long output starts collapsed, and its markup is text.
        output = first.locator("details.attempt-output-long")
        self.expect(output).not_to_have_attribute("open", "")
        self.expect(output.locator("summary")).to_contain_text("Output (")
        output.locator("summary").click()
        self.expect(output.locator("pre")).to_contain_text(MARKUP)

        self.flaky.release()
        self.expect(self.attempts(page)).to_have_count(3)
        self.expect(self.attempts(page).locator(".attempt-result")).to_have_text(
            ["HTTP 500", "HTTP 500", "HTTP 200"]
        )
        self.expect(page.locator(".timeline .attempt-running")).to_have_count(0)
        self.expect(self.attempts(page).nth(2)).to_have_class(re.compile("attempt-success"))
        # A short JSON output is shown at once, indented.
        self.expect(self.attempts(page).nth(2).locator("pre")).to_have_text(
            '{\n  "ok": true,\n  "attempt": 3\n}'
        )
        self.expect(page.locator('dd[data-field="status"]')).to_have_text("success")
        # The opened output stayed open through the refreshes.
        self.expect(output).to_have_attribute("open", "")
        self.expect(page.locator("main img, main script")).to_have_count(0)
        self.assertEqual(self.browser.alerts, [])

    def test_error_without_answer_is_shown(self) -> None:
        """An attempt that got no answer shows the error instead of a status code."""
        job_id = self.server.push(REFUSED_URL, name="refused", retries=0)
        self.wait_status(job_id, "failure")
        page = self.open(f"/jobs/{job_id}")
        self.expect(self.attempts(page)).to_have_count(1)
        attempt = self.attempts(page).first
        self.expect(attempt.locator(".attempt-result")).to_have_text("no answer")
        self.expect(attempt.locator(".attempt-err")).not_to_be_empty()
        self.expect(page.locator('dd[data-field="attempts"]')).to_have_text("attempt 1 of 1")

    def failed_jobs(self, count: int, **payload: Any) -> list[str]:
        """
        Push ``count`` jobs that fail their first request without retries; wait for them.
        """
        ids = [
            self.push_flaky(name=f"bulk-{i}", retries=0, payload={"fail": 1, **payload})
            for i in range(count)
        ]
        for job_id in ids:
            self.wait_status(job_id, "failure")
        return ids

    def open_bulk(self, page: Any, bulk: Any, name: str) -> Any:
        """
        Click the bulk button ``name`` and return the dialog it opens. The bar
        counts the matching jobs again before it asks (several list requests);
        on a loaded machine a click may find no dialog in time: try again, as
        a person would, up to three times.
        """
        dialog = page.locator("dialog[open]")
        for attempt in range(3):
            button = bulk.get_by_role("button", name=name)
            self.expect(button).to_be_enabled()
            button.click()
            try:
                self.expect(dialog).to_be_visible()
                return dialog
            except AssertionError:
                if attempt == 2:
                    raise
        return dialog

    def test_delete_all_matching(self) -> None:
        """Delete all N matching on status=failure asks with N, and deletes exactly those."""
        failed = self.failed_jobs(2)
        kept = self.push_flaky(name="bulk-ok")
        self.wait_status(kept, "success")
        page = self.open("/?status=failure")
        bulk = page.get_by_role("group", name="Actions on every matching job")
        self.expect(bulk.locator(".bulk-info")).to_have_text("2 matching jobs")
        # A failure filter can match no active job: no Stop.
        self.expect(bulk.get_by_role("button")).to_have_text(
            ["Restart all 2 matching", "Delete all 2 matching"]
        )
        self.open_bulk(page, bulk, "Delete all 2 matching")
        dialog = page.locator("dialog[open]")
        self.expect(dialog.get_by_role("heading")).to_have_text("Delete 2 finished jobs")
        self.expect(dialog).to_contain_text("Delete all 2 finished jobs matching status “failure”?")
        # Cancel does nothing.
        self.confirm(page, "Cancel")
        self.assertEqual([self.job(i)[0] for i in failed], [200, 200])

        self.open_bulk(page, bulk, "Delete all 2 matching")
        self.confirm(page, "Delete all")
        self.message(page, "success", "Deleted 2 jobs matching status “failure”.")
        self.assertEqual([self.job(i)[0] for i in failed], [404, 404])
        self.assertEqual(self.job(kept)[0], 200)
        self.expect(page.locator(".empty")).to_have_text("No jobs match the search.")
        self.expect(bulk.locator(".bulk-info")).to_have_text("No matching jobs")
        self.expect(bulk.get_by_role("button")).to_have_count(0)

        # An error shows the server's own text.
        self.failed_jobs(1)
        page.route(
            "**/jobs/delete?*",
            lambda route: route.fulfill(
                status=503,
                content_type="application/json",
                body='{"error":"The store is not available"}',
            ),
        )
        self.open_bulk(page, bulk, "Delete all 1 matching")
        self.expect(page.locator("dialog[open]")).to_contain_text("1 finished job matching")
        self.confirm(page, "Delete all")
        self.message(
            page, "error", "Could not delete the matching jobs: The store is not available (503)"
        )

    def test_restart_and_stop_all_matching_a_search(self) -> None:
        """On a search, Restart all restarts the finished matches and Stop all stops the rest."""
        failed = self.failed_jobs(2)
        held = self.push_flaky(name="bulk-held", payload={"hold": True})
        self.wait_status(held, "running")
        self.push_flaky(name="other")
        page = self.open("/?term=bulk-")
        bulk = page.get_by_role("group", name="Actions on every matching job")
        self.expect(bulk.locator(".bulk-info")).to_have_text("3 matching jobs (1 active)")
        self.expect(bulk.get_by_role("button")).to_have_text(
            ["Stop all 1 matching", "Restart all 2 matching", "Delete all 2 matching"]
        )
        self.open_bulk(page, bulk, "Restart all 2 matching")
        dialog = page.locator("dialog[open]")
        self.expect(dialog).to_contain_text("Restart all 2 finished jobs matching search “bulk-”?")
        self.expect(dialog).to_contain_text("The other 1 matching job is left as it is.")
        self.confirm(page, "Restart all")
        self.message(page, "success", "Restarted 2 jobs matching search “bulk-”.")
        # Their second request succeeds; the running job was left alone.
        for job_id in failed:
            self.assertEqual(self.wait_status(job_id, "success")["attempts"], 1)
        self.assertEqual(self.job(held)[1]["status"], "running")

        self.expect(bulk.get_by_role("button", name="Stop all 1 matching")).to_be_visible()
        self.open_bulk(page, bulk, "Stop all 1 matching")
        self.expect(page.locator("dialog[open]")).to_contain_text("1 active job matching")
        self.confirm(page, "Stop all")
        self.message(page, "success", "Stopped 1 job matching search “bulk-”.")
        self.wait_status(held, "canceled")


class ScheduledBrowserTests(BrowserTestCase):
    """
    Jobs that wait for a later time: a long backoff and a delay.
    """

    server_config = {"retries": 2, "retry_min_backoff": 600, "retry_max_backoff": 600}

    def test_scheduled_jobs_show_their_due_time(self) -> None:
        """The scheduled filter lists a retrying job and a delayed one, with their due times."""
        flaky = FlakyWorker()
        self.addCleanup(flaky.close)
        retrying = self.server.push(flaky.url + "/work", name="retrying", payload={"fail": 1})
        self.wait_status(retrying, "scheduled")
        delayed = self.server.push(self.worker.url + "/ok", name="delayed", delay=3600)
        done = self.server.push(self.worker.url + "/ok", name="done")
        self.wait_status(done, "success")

        page = self.open()
        card = page.get_by_role("region", name="Jobs scheduled")
        self.expect(card.locator(".card-value")).to_have_text("2")
        page.get_by_label("Filter by status").select_option("scheduled")
        self.expect(page).to_have_url(re.compile(r"\?status=scheduled$"))
        self.expect(page.locator("tbody tr")).to_have_count(2)
        row = self.row(page, retrying)
        self.expect(row.locator(".badge")).to_have_text("scheduled")
        self.expect(row.locator(".badge")).to_have_class(re.compile("status-scheduled"))
        # The backoff is jittered to between half and all of 600 s.
        self.expect(row.locator(".due")).to_have_text(re.compile(r"^in ([5-9]|10) min$"))
        self.expect(row.locator(".due")).to_have_attribute(
            "title",
            re.compile(r"^due \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(.*Z\)\nafter attempt 1 of 3$"),
        )
        self.expect(self.row(page, delayed).locator(".due")).to_have_text(
            re.compile(r"^in (59 min|1 h 00 min)$")
        )
        self.expect(row.get_by_role("button")).to_have_text(["Stop"])
        # A scheduled job can be stopped, neither restarted nor deleted in bulk.
        bulk = page.get_by_role("group", name="Actions on every matching job")
        self.expect(bulk.get_by_role("button")).to_have_text(["Stop all 2 matching"])

        row.get_by_role("link", name=retrying).click()
        self.expect(page.locator('dd[data-field="status"]')).to_have_text("scheduled")
        self.expect(page.locator('dd[data-field="attempts"]')).to_have_text("attempt 1 of 3")
        self.expect(page.locator('dd[data-field="runAt"]')).to_have_text(
            re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in ([5-9]|10) min\)$")
        )
        self.expect(self.attempts_of(page)).to_have_count(1)
        self.expect(page.locator(".timeline .attempt-scheduled")).to_contain_text("Attempt 2")
        self.expect(page.locator(".timeline .attempt-scheduled")).to_contain_text("due ")

    def attempts_of(self, page: Any) -> Any:
        return page.locator(".timeline li.attempt[data-attempt]")


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
        for delay in (900, 3600):
            server.push(worker.url + "/work", name="nightly-report", delay=delay)
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
