"""
The web UI against a server with ``[[tokens]]``, in real headless Chromium (as
tests/test_ui_browser.py: skipped without Chromium unless ``CI=true``).

The page asks for a token once, keeps it in ``sessionStorage`` (no cookie),
sends it as a Bearer header, shows 401/403 as messages and can sign out.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hq.auth import token_digest
from tests.serverprocess import RecordingWorker, ServerProcess, wait_for
from tests.test_ui_browser import TIMEOUT_MS, Browser, skip_reason

READ, ADMIN = "ui-read-token", "ui-admin-token"
TOKENS = "".join(
    f'[[tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{token_digest(token)}"\n'
    for name, role, token in (("viewer", "read", READ), ("operator", "admin", ADMIN))
)


class UIAuthTests(SynchronousTestCase):
    """
    What an operator sees on a server that needs tokens.
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
        self.server = ServerProcess(os.path.abspath(self.mktemp()), shutdown_timeout=0)
        with open(self.server.config_path, "a") as f:
            f.write(TOKENS)
        self.addCleanup(self.server.stop)
        self.server.start()
        self.browser = Browser()
        self.addCleanup(self.browser.close)
        self.addCleanup(lambda: self.assertEqual(self.browser.errors, [], "errors in the page"))

    def api(self, method: str, path: str, body: Any = None, token: str = ADMIN) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def finished_job(self) -> str:
        job_id: str = self.api("POST", "/job", {"url": self.worker.url + "/ok"})["id"]
        wait_for(
            lambda: self.api("GET", f"/job/{job_id}")["status"] == "success", 15, "the job to end"
        )
        return job_id

    def open(self) -> Any:
        page = self.browser.page()
        page.goto(self.server.base + "/ui/")
        return page

    def sign_in(self, page: Any, token: str) -> None:
        form = page.locator("#hq-signin")
        self.expect(form).to_be_visible()
        form.get_by_label("API token").fill(token)
        form.get_by_role("button", name="Sign in").click()

    def confirm(self, page: Any, button: str) -> None:
        dialog = page.locator("dialog[open]")
        self.expect(dialog).to_be_visible()
        dialog.get_by_role("button", name=button, exact=True).click()

    def test_without_token_the_form_asks_and_no_job_loads(self) -> None:
        """The page shows the sign-in form and its message; the job list stays empty."""
        job_id = self.finished_job()
        page = self.open()
        form = page.locator("#hq-signin")
        self.expect(form).to_be_visible()
        self.expect(form.locator(".signin-message")).to_contain_text("An API token is required")
        time.sleep(2.5)  # one refresh later, still nothing
        self.expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_have_count(0)
        self.assertNotIn(job_id, page.locator("#app").inner_text())
        self.assertEqual(page.evaluate("sessionStorage.length"), 0)

    def test_wrong_token_is_refused_with_a_message(self) -> None:
        """A token the server does not know: the form stays, saying so."""
        page = self.open()
        self.sign_in(page, "not-a-token")
        self.expect(page.locator("#hq-signin .signin-message")).to_have_text(
            "The API token is not valid"
        )
        self.expect(page.locator("#hq-signin")).to_be_visible()

    def test_read_token_lists_but_actions_are_refused_visibly(self) -> None:
        """With a read token the list loads; Delete is refused with a visible 403 message."""
        job_id = self.finished_job()
        page = self.open()
        self.sign_in(page, READ)
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        self.expect(row.locator(".col-status")).to_have_text("success")
        self.assertEqual(page.evaluate("sessionStorage.getItem('hq-token')"), READ)
        self.assertEqual(page.context.cookies(), [])
        row.get_by_role("button", name=f"Delete job {job_id}").click()
        self.confirm(page, "Delete")
        self.expect(
            page.locator(".toast-error").filter(has_text="needs the role 'admin'")
        ).to_be_visible()
        self.assertEqual(self.api("GET", f"/job/{job_id}")["id"], job_id)
        # Kept for the tab: a reload does not ask again.
        page.reload()
        self.expect(row.locator(".col-status")).to_have_text("success")
        self.expect(page.locator("#hq-signin[open]")).to_have_count(0)

    def test_admin_token_acts_and_sign_out_forgets_it(self) -> None:
        """An admin token deletes; Sign out forgets the token and asks again."""
        job_id = self.finished_job()
        page = self.open()
        self.sign_in(page, ADMIN)
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        row.get_by_role("button", name=f"Delete job {job_id}").click()
        self.confirm(page, "Delete")
        self.expect(
            page.locator(".toast-success").filter(has_text=f"Job {job_id} deleted.")
        ).to_be_visible()
        with self.assertRaises(urllib.error.HTTPError):
            self.api("GET", f"/job/{job_id}")
        page.get_by_role("button", name="Sign out").click()
        self.expect(page.locator("#hq-signin .signin-message")).to_contain_text("Signed out")
        self.assertIsNone(page.evaluate("sessionStorage.getItem('hq-token')"))
