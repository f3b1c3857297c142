"""
The blocking and asyncio clients of hq_sdk against a real HQ server process on 127.0.0.1
(every method, errors, tokens, idempotency keys), and their resending rules over a
transport that loses answers or fails on purpose.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
from twisted.trial.unittest import SynchronousTestCase

from hq_sdk import (
    AsyncClient,
    BatchPushError,
    Client,
    Flow,
    HQError,
    JobList,
    RemoteJob,
    Schedule,
)
from hq_sdk.transport import NO_RETRIES, RetryPolicy
from tests.flowfake import FlowTable
from tests.serverprocess import RecordingWorker, ServerProcess, wait_for

READ_TOKEN = "read-token-for-sdk-tests"
ADMIN_TOKEN = "admin-token-for-sdk-tests"


def free_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def no_sleep(seconds: float) -> None:
    """A sleep that does not wait."""


async def no_async_sleep(seconds: float) -> None:
    """An asyncio sleep that does not wait."""


class Flavour:
    """
    Calls one client method, by name, in one flavour: blocking or asyncio.
    """

    name = ""

    def __init__(self, address: str, **options: Any) -> None:
        self.address = address
        self.options = options

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class Blocking(Flavour):
    name = "blocking"

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with Client(self.address, sleep=no_sleep, **self.options) as client:
            return getattr(client, method)(*args, **kwargs)


class Asyncio(Flavour):
    name = "asyncio"

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            async with AsyncClient(self.address, sleep=no_async_sleep, **self.options) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(run())


_SERVERS: dict[str, tuple[ServerProcess, RecordingWorker]] = {}


def _stop_servers() -> None:
    for server, worker in _SERVERS.values():
        server.stop()
        worker.close()
        shutil.rmtree(server.directory, ignore_errors=True)


atexit.register(_stop_servers)


def shared_server(extra_config: str) -> tuple[ServerProcess, RecordingWorker]:
    """
    Return the HQ server (and its recording worker) for ``extra_config``, started on
    first use and stopped when the test run ends (trial has no ``setUpClass``).
    """
    if extra_config not in _SERVERS:
        directory = tempfile.mkdtemp(prefix="hq-sdk-")
        server = ServerProcess(directory)
        if extra_config:
            with open(server.config_path, "a") as f:
                f.write(extra_config)
        _SERVERS[extra_config] = (server.start(), RecordingWorker())
    return _SERVERS[extra_config]


class ServerMixin:
    """
    One HQ server and one recording worker, shared by the tests of one configuration.
    """

    server: ServerProcess
    worker: RecordingWorker
    extra_config: ClassVar[str] = ""

    def setUp(self) -> None:
        self.server, self.worker = shared_server(self.extra_config)


class ClientContract(ServerMixin):
    """
    Every method of one client flavour against the real server.
    """

    flavour: ClassVar[type[Flavour]]
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertIn: Callable[..., None]
    assertIsNone: Callable[..., None]
    assertIsNotNone: Callable[..., None]
    assertIsInstance: Callable[..., None]
    assertNotIn: Callable[..., None]
    assertRaises: Callable[..., Any]

    def hq(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.flavour(self.server.base).call(method, *args, **kwargs)

    def error(self, method: str, *args: Any, **kwargs: Any) -> HQError:
        with self.assertRaises(HQError) as caught:
            self.hq(method, *args, **kwargs)
        error: HQError = caught.exception
        return error

    def unique(self) -> str:
        return "sdk-" + uuid.uuid4().hex[:12]

    def finished(self, job_id: str) -> RemoteJob:
        def done() -> RemoteJob | None:
            job: RemoteJob = self.hq("get", job_id)
            return job if job.status in ("success", "failure", "canceled") else None

        result: RemoteJob = wait_for(done, 20, f"job {job_id} to finish", 0.1)
        return result

    def test_info_and_stats(self) -> None:
        """info() gives the version; stats() the counters."""
        info = self.hq("info")
        self.assertTrue(info.version)
        stats = self.hq("stats")
        self.assertEqual(stats.dispatchers, 1)
        self.assertIn("numStoredJobs", stats.raw)

    def test_push_sends_an_idempotency_key(self) -> None:
        """push() without a key sends a UUID4 one; the job is stored with it."""
        job = self.hq("push", {"url": self.worker.url + "/", "payload": {"n": 1}}, delay=3600)
        self.assertEqual(uuid.UUID(job.idempotency_key).version, 4)
        self.assertEqual((job.status, job.payload, job.replayed), ("scheduled", {"n": 1}, False))
        self.assertEqual(self.hq("get", job.id), job)

    def test_push_with_the_same_key_replays(self) -> None:
        """A second push with one key answers the first job, marked replayed."""
        key = self.unique()
        first = self.hq("push", {"url": self.worker.url + "/"}, idempotency_key=key, delay=60)
        again = self.hq("push", {"url": self.worker.url + "/"}, idempotency_key=key, delay=60)
        self.assertEqual((again.id, first.replayed, again.replayed), (first.id, False, True))

    def test_push_flow_key_and_callbacks(self) -> None:
        """push() sets flowKey and the callback URLs; without them the key is host:port."""
        job = self.hq(
            "push",
            {"url": self.worker.url + "/"},
            delay=3600,
            flow_key="sdk-tenant",
            callback_url=self.worker.url + "/ok",
            failure_callback_url=self.worker.url + "/failed",
        )
        self.assertEqual(
            (job.flow_key, job.callback_url, job.failure_callback_url, job.callback_job_id),
            ("sdk-tenant", self.worker.url + "/ok", self.worker.url + "/failed", None),
        )
        self.assertEqual(self.hq("get", job.id), job)
        plain = self.hq("push", {"url": self.worker.url + "/"}, delay=3600)
        self.assertEqual(plain.flow_key, self.worker.url.split("//")[1])
        self.assertEqual((plain.callback_url, plain.failure_callback_url), (None, None))
        error = self.error("push", {"url": self.worker.url + "/"}, callback_url="ftp://x/")
        self.assertEqual(error.status, 422)
        self.assertIn("'callbackUrl'", error.message)
        self.hq("stop", job.id)
        self.hq("stop", plain.id)

    def test_flows(self) -> None:
        """set_flow, get_flow, list_flows, pause, resume and delete against the server."""
        key = self.unique() + "/[::1]:8000 %"
        flow = self.hq("set_flow", key, parallelism=3, rate=10, period=60)
        self.assertIsInstance(flow, Flow)
        self.assertEqual(
            (flow.key, flow.parallelism, flow.rate, flow.period, flow.paused, flow.configured),
            (key, 3, 10, 60, False, True),
        )
        self.assertEqual(self.hq("get_flow", key).parallelism, 3)
        self.assertIn(key, [f.key for f in self.hq("list_flows")])
        self.assertTrue(self.hq("pause_flow", key).paused)
        self.assertFalse(self.hq("resume_flow", key).paused)
        replaced = self.hq("set_flow", key, rate=5)
        self.assertEqual((replaced.parallelism, replaced.rate, replaced.period), (0, 5, 1))
        deleted = self.hq("delete_flow", key)
        self.assertEqual((deleted.configured, deleted.rate), (False, 0))
        self.assertNotIn(key, [f.key for f in self.hq("list_flows")])
        error = self.error("set_flow", key, parallelism=-1)
        self.assertEqual(error.status, 422)
        self.assertIn("'parallelism'", error.message)
        self.assertEqual(self.error("get_flow", "k" * 256).status, 422)

    def test_a_paused_flow_holds_its_jobs(self) -> None:
        """A job of a paused key waits (counted in the flow); resumed, it runs."""
        key = self.unique()
        self.hq("pause_flow", key)
        try:
            job = self.hq("push", {"url": self.worker.url + "/"}, flow_key=key)

            def counted() -> Flow | None:
                flow: Flow = self.hq("get_flow", key)
                return flow if flow.waiting == 1 else None

            wait_for(counted, 20, "the job to be counted as waiting", 0.1)
            self.assertEqual(self.hq("get", job.id).status, "waiting")
        finally:
            self.hq("resume_flow", key)
        self.assertEqual(self.finished(job.id).status, "success")
        self.hq("delete_flow", key)

    def test_push_errors_carry_status_and_message(self) -> None:
        """A refused push is an HQError with the server's status and message."""
        error = self.error("push", {"name": "no-url"})
        self.assertEqual((error.status, error.message), (422, "'url' is required"))
        key = self.unique()
        self.hq("push", {"url": self.worker.url + "/", "payload": 1}, idempotency_key=key)
        conflict = self.error(
            "push", {"url": self.worker.url + "/", "payload": 2}, idempotency_key=key
        )
        self.assertEqual(conflict.status, 409)

    def test_get_unknown_and_malformed_ids(self) -> None:
        """An unknown id is a 404 from the server; a non-numeric one the same, unsent."""
        error = self.error("get", "1")
        self.assertEqual((error.status, error.message), (404, "The job '1' is not found"))
        error = self.error("get", "1/stop")
        self.assertEqual(error.status, 404)

    def test_push_run_attempts_and_list(self) -> None:
        """A pushed job runs; attempts() lists its attempt; list_jobs() finds it by name."""
        name = self.unique()
        job = self.hq("push", {"url": self.worker.url + "/", "name": name})
        done = self.finished(job.id)
        self.assertEqual((done.status, done.status_code, done.attempts), ("success", 200, 1))
        attempts = self.hq("attempts", job.id)
        self.assertEqual([(a.attempt, a.status_code) for a in attempts], [(1, 200)])
        page = self.hq("list_jobs", name=name)
        self.assertIsInstance(page, JobList)
        self.assertEqual([j.id for j in page.jobs], [job.id])

    def test_list_pages(self) -> None:
        """list_jobs() pages with limit, next and begin."""
        name = self.unique()
        ids = self.hq("push_many", [{"url": self.worker.url + "/", "name": name}] * 3)
        first = self.hq("list_jobs", name=name, limit=2)
        self.assertEqual(([j.id for j in first.jobs], first.has_next), (ids[:2], True))
        second = self.hq("list_jobs", name=name, limit=2, begin=first.next)
        self.assertEqual(([j.id for j in second.jobs], second.has_next), (ids[2:], False))

    def test_stop_delete_restart(self) -> None:
        """stop() cancels; a second stop is 409; restart() re-runs; delete() removes."""
        job = self.hq("push", {"url": self.worker.url + "/"}, delay=3600)
        self.assertEqual(self.hq("stop", job.id), job.id)
        self.assertEqual(self.hq("get", job.id).status, "canceled")
        self.assertEqual(self.error("stop", job.id).status, 409)
        copy = self.hq("restart", job.id, copy=True)
        self.assertTrue(copy.id != job.id)
        again = self.hq("restart", job.id)
        self.assertEqual(again.id, job.id)
        self.finished(copy.id)
        self.finished(job.id)
        self.assertEqual(self.hq("delete", job.id), job.id)
        self.assertEqual(self.error("delete", job.id).status, 404)

    def test_push_many_and_batch_errors(self) -> None:
        """push_many() answers ids in order; a bad job is a BatchPushError naming it."""
        name = self.unique()
        seen: list[list[str]] = []
        ids = self.hq(
            "push_many",
            [{"url": self.worker.url + "/", "name": name}] * 5,
            batch_size=2,
            on_batch=seen.append,
        )
        self.assertEqual(len(ids), 5)
        self.assertEqual([len(b) for b in seen], [2, 2, 1])
        with self.assertRaises(BatchPushError) as caught:
            self.hq("push_many", [{"url": self.worker.url + "/"}, {"name": "x"}])
        self.assertEqual((caught.exception.status, caught.exception.job_index), (422, 1))

    def test_bulk_actions(self) -> None:
        """stop_matching, restart_matching and delete_matching answer counts."""
        name = self.unique()
        self.hq("push_many", [{"url": self.worker.url + "/", "name": name, "delay": 3600}] * 2)
        self.assertEqual(self.hq("stop_matching", name=name), 2)
        self.assertEqual(self.hq("delete_matching", name=name), 2)
        self.assertEqual(self.hq("list_jobs", name=name).count, 0)
        self.assertEqual(self.error("stop_matching").status, 400)

    def test_schedules(self) -> None:
        """add_schedule(), schedule(), schedules(), pause, resume and delete a schedule."""
        name = self.unique()
        job = {"url": self.worker.url + "/", "payload": {"report": "daily"}, "retries": 2}
        added = self.hq("add_schedule", "30 2 * * *", job, name=name, timezone="Europe/Berlin")
        self.assertIsInstance(added, Schedule)
        self.assertTrue(added.id.isdigit())
        self.assertEqual(
            (added.name, added.cron, added.timezone, added.paused),
            (name, "30 2 * * *", "Europe/Berlin", False),
        )
        self.assertEqual(added.job["url"], job["url"])
        self.assertEqual((added.job["payload"], added.job["retries"]), ({"report": "daily"}, 2))
        self.assertIsNotNone(added.next_run_at)
        self.assertEqual((added.last_run_at, added.last_job_id), (None, None))
        self.assertEqual(self.hq("schedule", added.id), added)
        self.assertIn(added, self.hq("schedules"))
        paused = self.hq("pause_schedule", added.id)
        self.assertEqual((paused.paused, paused.next_run_at), (True, None))
        self.assertEqual(self.hq("pause_schedule", added.id), paused)
        resumed = self.hq("resume_schedule", added.id)
        self.assertFalse(resumed.paused)
        self.assertIsNotNone(resumed.next_run_at)
        self.assertEqual(self.hq("delete_schedule", added.id), added.id)
        error = self.error("schedule", added.id)
        self.assertEqual(
            (error.status, error.message), (404, f"The schedule '{added.id}' is not found")
        )
        self.assertEqual(self.error("delete_schedule", added.id).status, 404)
        self.assertNotIn(added.id, [s.id for s in self.hq("schedules")])

    def test_schedule_defaults_and_paused(self) -> None:
        """Without name and timezone: default and UTC; paused=True adds it paused."""
        added = self.hq("add_schedule", "0 * * * *", {"url": self.worker.url + "/"}, paused=True)
        self.assertEqual(
            (added.name, added.timezone, added.paused, added.next_run_at),
            ("default", "UTC", True, None),
        )
        self.assertEqual(added.job["name"], "default")
        self.hq("delete_schedule", added.id)

    def test_schedule_errors(self) -> None:
        """A bad cron, time zone or job is a 422 naming the field; a malformed id a 404."""
        url = self.worker.url + "/"
        error = self.error("add_schedule", "61 * * * *", {"url": url})
        self.assertEqual(error.status, 422)
        self.assertIn("cron", error.message)
        error = self.error("add_schedule", "* * * * *", {"url": url}, timezone="Mars/Olympus")
        self.assertEqual(error.status, 422)
        self.assertIn("Mars/Olympus", error.message)
        error = self.error("add_schedule", "* * * * *", {"payload": 1})
        self.assertEqual((error.status, error.message), (422, "'job.url' is required"))
        for method in ("schedule", "pause_schedule", "resume_schedule", "delete_schedule"):
            self.assertEqual(self.error(method, "1/pause").status, 404)
        self.assertEqual(self.error("resume_schedule", "1").status, 404)

    def test_a_schedule_fires(self) -> None:
        """Each second a 6-field schedule pushes a job named after it; last_job_id says it."""
        name = self.unique()
        added = self.hq("add_schedule", "* * * * * *", {"url": self.worker.url + "/"}, name=name)
        try:

            def fired() -> Schedule | None:
                now: Schedule = self.hq("schedule", added.id)
                return now if now.last_job_id is not None else None

            schedule: Schedule = wait_for(fired, 20, "the schedule to fire", 0.1)
        finally:
            self.hq("delete_schedule", added.id)
        self.assertIsNotNone(schedule.last_run_at)
        job = self.hq("get", schedule.last_job_id)
        self.assertEqual((job.name, job.raw.get("scheduleId")), (name, added.id))

    def test_unreachable_server(self) -> None:
        """No server: HQError without a status, saying it cannot reach HQ."""
        with self.assertRaises(HQError) as caught:
            self.flavour(f"http://127.0.0.1:{free_port()}", retry=NO_RETRIES).call("info")
        self.assertIsNone(caught.exception.status)
        self.assertIn("cannot reach HQ at http://127.0.0.1:", caught.exception.message)


class BlockingClientTests(ClientContract, SynchronousTestCase):
    """The blocking client against the real server."""

    flavour = Blocking


class AsyncClientTests(ClientContract, SynchronousTestCase):
    """The asyncio client against the real server."""

    flavour = Asyncio


def _token_entry(name: str, token: str, role: str) -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f'\n[[tokens]]\nname = "{name}"\nsha256 = "{digest}"\nrole = "{role}"\n'


class TokenContract(ServerMixin):
    """Token authentication, one flavour."""

    flavour: ClassVar[type[Flavour]]
    extra_config = _token_entry("reader", READ_TOKEN, "read") + _token_entry(
        "admin", ADMIN_TOKEN, "admin"
    )
    assertEqual: Callable[..., None]
    assertRaises: Callable[..., Any]

    def test_tokens(self) -> None:
        """No token is 401, a read token may list but not push (403), admin may push."""
        base = self.server.base
        with self.assertRaises(HQError) as caught:
            self.flavour(base).call("list_jobs")
        self.assertEqual(caught.exception.status, 401)
        page = self.flavour(base, token=READ_TOKEN).call("list_jobs", name="^no-such-name$")
        self.assertEqual(page.count, 0)
        with self.assertRaises(HQError) as caught:
            self.flavour(base, token=READ_TOKEN).call("push", {"url": self.worker.url})
        self.assertEqual(caught.exception.status, 403)
        job = self.flavour(base, token=ADMIN_TOKEN).call(
            "push", {"url": self.worker.url + "/"}, delay=60
        )
        self.assertEqual(job.status, "scheduled")

    def test_use_token(self) -> None:
        """use_token() sets the token of an existing client."""
        with Client(self.server.base) as client:
            self.assertEqual(client.use_token(ADMIN_TOKEN).stats().dispatchers, 1)


class BlockingTokenTests(TokenContract, SynchronousTestCase):
    """Tokens with the blocking client."""

    flavour = Blocking


class AsyncTokenTests(TokenContract, SynchronousTestCase):
    """Tokens with the asyncio client."""

    flavour = Asyncio


class LosingTransport(httpx.HTTPTransport):
    """
    Forwards every request to the real server, but loses the answer (a read timeout) of
    the first ``lose`` requests whose method and path match: the server did the work,
    the client never heard.
    """

    def __init__(self, method: str, path: str, lose: int = 1) -> None:
        super().__init__()
        self.match = (method, path)
        self.lose = lose
        self.sent: list[tuple[str, str, bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path, request.content))
        response = super().handle_request(request)
        path = request.url.path
        if self.lose > 0 and request.method == self.match[0]:
            if path == self.match[1] or path.endswith(self.match[1]):
                self.lose -= 1
                response.read()
                response.close()
                raise httpx.ReadTimeout("timed out", request=request)
        return response


class AsyncLosingTransport(httpx.AsyncHTTPTransport):
    """:class:`LosingTransport` for the asyncio client."""

    def __init__(self, method: str, path: str, lose: int = 1) -> None:
        super().__init__()
        self.match = (method, path)
        self.lose = lose
        self.sent: list[tuple[str, str, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path, request.content))
        response = await super().handle_async_request(request)
        path = request.url.path
        if self.lose > 0 and request.method == self.match[0]:
            if path == self.match[1] or path.endswith(self.match[1]):
                self.lose -= 1
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("timed out", request=request)
        return response


class ResendingContract(ServerMixin):
    """
    What is sent again after a lost answer, against the real server: pushes with keys and
    reads are; delete and stop are not.
    """

    asyncio_flavour: ClassVar[bool]
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertIn: Callable[..., None]
    assertRaises: Callable[..., Any]

    def call(self, transport: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        options: dict[str, Any] = {"transport": transport}
        options.update(kwargs.pop("client_options", {}))
        flavour: Flavour
        if self.asyncio_flavour:
            flavour = Asyncio(self.server.base, **options)
        else:
            flavour = Blocking(self.server.base, **options)
        return flavour.call(method, *args, **kwargs)

    def losing(self, method: str, path: str) -> Any:
        if self.asyncio_flavour:
            return AsyncLosingTransport(method, path)
        return LosingTransport(method, path)

    def stored(self, name: str) -> list[dict[str, Any]]:
        return [j for j in self.server.jobs() if j["name"] == name]

    def test_push_resent_after_a_lost_answer_makes_one_job(self) -> None:
        """The push's answer is lost; it is sent again with its key: one job, same id."""
        name = "resend-" + uuid.uuid4().hex[:8]
        transport = self.losing("POST", "/job")
        job = self.call(transport, "push", {"url": self.worker.url + "/", "name": name}, delay=60)
        self.assertEqual([m for m, _, _ in transport.sent], ["POST", "POST"])
        first, second = (json.loads(body) for _, _, body in transport.sent)
        self.assertEqual(first["idempotencyKey"], second["idempotencyKey"])
        self.assertTrue(job.replayed)
        self.assertEqual([j["id"] for j in self.stored(name)], [job.id])

    def test_push_without_a_key_is_not_resent(self) -> None:
        """Without a key (auto keys off) a lost answer is an error; sent once, one job."""
        name = "nokey-" + uuid.uuid4().hex[:8]
        transport = self.losing("POST", "/job")
        with self.assertRaises(HQError) as caught:
            self.call(
                transport,
                "push",
                {"url": self.worker.url + "/", "name": name},
                delay=60,
                client_options={"auto_idempotency_key": False},
            )
        self.assertEqual(caught.exception.status, None)
        self.assertIn("no answer from HQ", caught.exception.message)
        self.assertEqual(len(transport.sent), 1)
        self.assertEqual(len(self.stored(name)), 1)

    def test_get_is_resent(self) -> None:
        """A read whose answer is lost is sent again."""
        job_id = self.server.push(self.worker.url + "/", delay=60)
        transport = self.losing("GET", "/job/" + job_id)
        self.assertEqual(self.call(transport, "get", job_id).id, job_id)
        self.assertEqual(len(transport.sent), 2)

    def test_stop_and_delete_are_not_resent(self) -> None:
        """stop() and delete() whose answers are lost fail once, unsent again."""
        job_id = self.server.push(self.worker.url + "/", delay=60)
        transport = self.losing("POST", "/stop")
        with self.assertRaises(HQError):
            self.call(transport, "stop", job_id)
        self.assertEqual(len(transport.sent), 1)
        transport = self.losing("DELETE", "/job/" + job_id)
        with self.assertRaises(HQError):
            self.call(transport, "delete", job_id)
        self.assertEqual(len(transport.sent), 1)
        # Both acted: the caller looks before acting again.
        self.assertEqual(self.server.request("GET", "/job/" + job_id)[0], 404)


class BlockingResendingTests(ResendingContract, SynchronousTestCase):
    """Resending, blocking client."""

    asyncio_flavour = False


class AsyncResendingTests(ResendingContract, SynchronousTestCase):
    """Resending, asyncio client."""

    asyncio_flavour = True


class FlowContract:
    """
    The flow methods of one client flavour, against an in-memory stand-in for the flow
    routes (tests/flowfake.py) behind an ``httpx.MockTransport``.
    """

    flavour: ClassVar[type[Flavour]]
    assertEqual: Callable[..., None]
    assertIsInstance: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertRaises: Callable[..., Any]

    def setUp(self) -> None:
        self.table = FlowTable()

    def hq(self, method: str, *args: Any, **kwargs: Any) -> Any:
        transport = httpx.MockTransport(self.table.httpx_handler)
        return self.flavour("http://hq.test", transport=transport).call(method, *args, **kwargs)

    def test_set_get_list_pause_resume_delete(self) -> None:
        """Each flow method answers the key's Flow; the key is percent-encoded whole."""
        key = "[::1]:8000/a b"
        flow = self.hq("set_flow", key, parallelism=3, rate=6, period=0.5)
        self.assertIsInstance(flow, Flow)
        self.assertEqual(
            (flow.key, flow.parallelism, flow.rate, flow.period, flow.configured),
            (key, 3, 6, 0.5, True),
        )
        self.assertEqual(self.hq("get_flow", key), flow)
        self.assertEqual(self.hq("list_flows"), [flow])
        self.assertTrue(self.hq("pause_flow", key).paused)
        self.assertFalse(self.hq("resume_flow", key).paused)
        self.assertFalse(self.hq("delete_flow", key).configured)
        self.assertEqual(self.table.requests[0], ("PUT", "/flow/%5B%3A%3A1%5D%3A8000%2Fa%20b"))

    def test_set_flow_replaces_the_limits(self) -> None:
        """Arguments left None are not sent: the server takes them as no limit."""
        self.hq("set_flow", "k", parallelism=2)
        flow = self.hq("set_flow", "k", rate=1)
        self.assertEqual((flow.parallelism, flow.rate, flow.period), (0, 1, 1))

    def test_errors(self) -> None:
        """A refusal is an HQError with the server's text; an empty key a ValueError."""
        with self.assertRaises(HQError) as caught:
            self.hq("set_flow", "k", period=0)
        self.assertEqual(caught.exception.status, 422)
        self.assertEqual(
            caught.exception.message, "'period' must be a number of seconds more than 0"
        )
        with self.assertRaises(ValueError):
            self.hq("get_flow", "")
        self.assertEqual(len(self.table.requests), 1)


class BlockingFlowTests(FlowContract, SynchronousTestCase):
    """The blocking client's flow methods."""

    flavour = Blocking


class AsyncFlowTests(FlowContract, SynchronousTestCase):
    """The asyncio client's flow methods."""

    flavour = Asyncio


class ScriptedTransport(httpx.MockTransport):
    """
    Answers requests from a script: each item is an exception to raise or a status.
    """

    def __init__(self, *script: type[Exception] | int) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, str]] = []
        super().__init__(self.answer)

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, int):
            body = {"id": "1", "status": "waiting"} if step == 200 else {"error": "busy"}
            return httpx.Response(step, json=body, headers={"Retry-After": "1"})
        raise step("scripted", request=request)


class ResendRuleTests(SynchronousTestCase):
    """The resending rules, without a server (a scripted httpx transport)."""

    def client(self, transport: httpx.BaseTransport, **options: Any) -> Client:
        client = Client("http://hq.test", transport=transport, sleep=no_sleep, **options)
        self.addCleanup(client.close)
        return client

    def test_a_connect_failure_is_resent_for_any_method(self) -> None:
        """Nothing was sent when connecting failed: even delete is sent again."""
        transport = ScriptedTransport(httpx.ConnectError)
        self.assertEqual(self.client(transport).delete("1"), "1")
        self.assertEqual(transport.sent, [("DELETE", "/job/1")] * 2)

    def test_503_is_resent_for_reads_not_for_stop(self) -> None:
        """A 503 answer: get is sent again, stop is not (its error is the 503)."""
        transport = ScriptedTransport(503)
        self.assertEqual(self.client(transport).get("1").id, "1")
        self.assertEqual(len(transport.sent), 2)
        transport = ScriptedTransport(503)
        with self.assertRaises(HQError) as caught:
            self.client(transport).stop("1")
        self.assertEqual((caught.exception.status, len(transport.sent)), (503, 1))

    def test_resending_is_bounded(self) -> None:
        """A read that keeps failing is sent ``attempts`` times, then fails."""
        transport = ScriptedTransport(*[httpx.ReadTimeout] * 10)
        with self.assertRaises(HQError):
            self.client(transport, retry=RetryPolicy(attempts=4)).info()
        self.assertEqual(len(transport.sent), 4)

    def test_4xx_is_never_resent(self) -> None:
        """A 429 is the server's answer: not sent again."""
        transport = ScriptedTransport(429)
        with self.assertRaises(HQError) as caught:
            self.client(transport).info()
        self.assertEqual((caught.exception.status, len(transport.sent)), (429, 1))

    def test_batch_resent_only_when_every_job_has_a_key(self) -> None:
        """push_many's batch is sent again after a lost answer only if all jobs have keys."""
        transport = ScriptedTransport(httpx.ReadTimeout)
        with self.assertRaises(BatchPushError):
            self.client(transport).push_many([{"url": "http://w/"}])
        self.assertEqual(len(transport.sent), 1)

        def ids(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"ids": ["7"]})

        sent: list[int] = []

        def lose_once(request: httpx.Request) -> httpx.Response:
            sent.append(1)
            if len(sent) == 1:
                raise httpx.ReadTimeout("lost", request=request)
            return ids(request)

        client = self.client(httpx.MockTransport(lose_once))
        self.assertEqual(client.push_many([{"url": "http://w/", "idempotencyKey": "k"}]), ["7"])
        self.assertEqual(len(sent), 2)

    def test_flow_changes_are_resent_they_replace_state(self) -> None:
        """set, pause, resume and delete of a flow are sent again after a lost answer."""
        table = FlowTable()
        lost: list[str] = []

        def lose_first(request: httpx.Request) -> httpx.Response:
            if request.method not in lost:
                lost.append(request.method)
                raise httpx.ReadTimeout("lost", request=request)
            return table.httpx_handler(request)

        client = self.client(httpx.MockTransport(lose_first))
        self.assertEqual(client.set_flow("k", parallelism=1).parallelism, 1)
        self.assertTrue(client.pause_flow("k").paused)
        self.assertFalse(client.delete_flow("k").configured)
        self.assertEqual(
            table.requests,
            [("PUT", "/flow/k"), ("POST", "/flow/k/pause"), ("DELETE", "/flow/k")],
        )

    def test_retry_waits_grow_and_honour_retry_after(self) -> None:
        """The waits double up to max_backoff; a Retry-After is waited at least."""
        policy = RetryPolicy(attempts=5, backoff=1, max_backoff=4)
        for sent, full in [(1, 1), (2, 2), (3, 4), (4, 4)]:
            self.assertTrue(full / 2 <= policy.wait(sent) <= full)
        self.assertEqual(policy.wait(1, retry_after=3), 3)
        self.assertEqual(policy.wait(1, retry_after=100), 4)
