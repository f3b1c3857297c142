"""
Prometheus metrics: the counters moved by hooks, the gauges computed at scrape
time, ``GET /metrics`` (parsed with prometheus_client's own parser), a real
server scraped after a few jobs, and the example alerts kept in step with the
metric names.
"""

from __future__ import annotations

import os
import re
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from hq.api import HQApi
from hq.config import Config
from hq.delivery import Delivery
from hq.ids import IdGenerator, first_id_at
from hq.metrics import ServerMetrics, attempt_outcome, status_class
from hq.model import STOPPED, Attempt, Job, Outcome
from hq.policy import RetryRules
from hq.store import StoreCounts
from hq.store.memory import MemoryStore
from hq.testing import FakeWorker, RecordingDispatch, Reply, WorkerStub
from hq.worker import WorkerClient
from tests.serverprocess import ROOT, RecordingWorker, ServerProcess, wait_for

T0 = 1_700_000_000

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """
    Parse an exposition with prometheus_client's parser: sample name and
    labels -> value. Fails on anything that is not the text format.
    """
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """
    Return one sample's value; fail if it is not exported.
    """
    return samples[(name, frozenset(labels.items()))]


class StatusClassTests(SynchronousTestCase):
    """
    The status_class label.
    """

    def test_classes(self) -> None:
        """A status code gives its class; no status (a transport error) gives "error"."""
        job = Job(id=1, url="http://w/")
        self.assertEqual(status_class(job), "error")
        classes = ((200, "2xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"), (503, "5xx"))
        for code, expected in classes:
            self.assertEqual(status_class(Job(id=1, url="http://w/", status_code=code)), expected)


class AttemptOutcomeTests(SynchronousTestCase):
    """
    The outcome label of a recorded attempt.
    """

    def attempt(self, code: int | None, err: str = "") -> Attempt:
        return Attempt(job_id=1, attempt=1, started_at=0, finished_at=1, status_code=code, err=err)

    def test_labels(self) -> None:
        """A 2xx ending the job is a success, a stop canceled, anything else a failure."""
        self.assertEqual(attempt_outcome(self.attempt(204), None), "success")
        self.assertEqual(attempt_outcome(self.attempt(None, STOPPED), None), "canceled")
        self.assertEqual(attempt_outcome(self.attempt(503, "Service Unavailable"), 5), "failure")
        self.assertEqual(
            attempt_outcome(self.attempt(500, "Internal Server Error"), None), "failure"
        )
        # Headers said 200, then the body timed out: not a success.
        self.assertEqual(attempt_outcome(self.attempt(200, "timed out after 1 s"), None), "failure")
        self.assertEqual(attempt_outcome(self.attempt(None, "connection refused"), 9), "failure")


class UnreadableCounts(MemoryStore):
    """
    A store whose ``counts`` fails once ``broken`` is set.
    """

    broken = False

    def counts(self, since_id: int, now: int) -> Deferred[StoreCounts]:
        if self.broken:
            return fail(RuntimeError("disk gone"))
        return super().counts(since_id, now)


class ScrapeTimeGaugeTests(SynchronousTestCase):
    """
    Gauges read from the store and the dispatcher when scraped.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.dispatch = RecordingDispatch()
        self.metrics = ServerMetrics(
            self.store,
            self.dispatch,
            self.clock,
            max_workers=6,
            queue_size=100,
            version="1.2.3",
            commit_hash="abc",
            process=False,
        )

    def scrape(self) -> Samples:
        body, content_type = self.successResultOf(Deferred.fromCoroutine(self.metrics.render("")))
        self.assertTrue(content_type.startswith("text/plain"))
        return parse(body.decode("utf-8"))

    def add(self, ms_ago: int, running: bool = False, finished: bool = False) -> Job:
        job = Job(id=first_id_at(T0 * 1000 - ms_ago), url="http://w/")
        self.successResultOf(self.store.create(job))
        if running or finished:
            self.successResultOf(self.store.start(job.id, T0 * 1000))
        if finished:
            self.successResultOf(
                self.store.finish(job.id, Outcome(finished_at=T0 * 1000, success=True))
            )
        return job

    def test_counts_and_oldest_waiting_age(self) -> None:
        """Stored, waiting, running come from the store; the age from the oldest waiting id."""
        self.add(300_000, finished=True)
        self.add(120_000, running=True)
        self.add(90_000)
        self.add(5_000)
        self.dispatch.in_queue = 2
        self.dispatch.num_workers = 1
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_jobs_stored"), 4)
        self.assertEqual(value(samples, "hq_jobs_waiting"), 2)
        self.assertEqual(value(samples, "hq_jobs_running"), 1)
        self.assertEqual(value(samples, "hq_jobs_in_queue"), 2)
        self.assertEqual(value(samples, "hq_workers_busy"), 1)
        self.assertEqual(value(samples, "hq_workers_max"), 6)
        self.assertEqual(value(samples, "hq_queue_capacity"), 100)
        self.assertAlmostEqual(value(samples, "hq_oldest_waiting_job_age_seconds"), 90, places=2)
        self.clock.advance(10)
        self.assertAlmostEqual(
            value(self.scrape(), "hq_oldest_waiting_job_age_seconds"), 100, places=2
        )

    def test_no_waiting_job_is_age_zero(self) -> None:
        """With nothing waiting the oldest age is 0, not the last value seen."""
        job = self.add(60_000)
        self.assertAlmostEqual(value(self.scrape(), "hq_oldest_waiting_job_age_seconds"), 60)
        self.successResultOf(self.store.stop(job.id, T0 * 1000))
        self.assertEqual(value(self.scrape(), "hq_oldest_waiting_job_age_seconds"), 0)

    def test_build_info(self) -> None:
        """hq_build_info carries the version and commit."""
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_build_info", version="1.2.3", commit="abc"), 1)

    def test_commit_observations(self) -> None:
        """Commits feed the latency histogram, the write count and the failure count."""
        self.metrics.commit_observed(0.003, 10, True)
        self.metrics.commit_observed(0.2, 5, True)
        self.metrics.commit_observed(0.001, 3, False)
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_store_commit_duration_seconds_count"), 3)
        self.assertAlmostEqual(value(samples, "hq_store_commit_duration_seconds_sum"), 0.204)
        self.assertEqual(value(samples, "hq_store_commit_duration_seconds_bucket", le="0.005"), 2)
        self.assertEqual(value(samples, "hq_store_writes_total"), 15)
        self.assertEqual(value(samples, "hq_store_commit_failures_total"), 1)

    def test_store_read_failure_keeps_serving(self) -> None:
        """A store that cannot be read still gets an answer; the failure is logged."""
        self.store = UnreadableCounts()
        self.metrics = ServerMetrics(
            self.store,
            self.dispatch,
            self.clock,
            max_workers=6,
            queue_size=100,
            version="1.2.3",
            commit_hash="abc",
            process=False,
        )
        self.add(1_000)
        self.scrape()
        self.store.broken = True
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_jobs_waiting"), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FlowMetricsTests(SynchronousTestCase):
    """
    The flow gauges per key (SPEC §16): the store's counts and the limit in force.
    """

    setUp = ScrapeTimeGaugeTests.setUp
    scrape = ScrapeTimeGaugeTests.scrape
    add = ScrapeTimeGaugeTests.add

    def test_flow_gauges_per_key(self) -> None:
        """A key with a waiting and a running job and a limit of 2 shows them."""
        from hq.flow import FlowControl
        from hq.model import FlowLimits

        flow = FlowControl(self.clock)
        flow.set_limits(FlowLimits("w:80", parallelism=2))
        self.metrics.flow = flow
        self.add(5)
        self.add(3, running=True)
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_flow_waiting", key="w:80"), 1)
        self.assertEqual(value(samples, "hq_flow_running", key="w:80"), 1)
        self.assertEqual(value(samples, "hq_flow_limit", key="w:80"), 2)
        self.assertEqual(value(samples, "hq_flow_throttled_total", key="w:80"), 0)


class SenderMetricsTests(SynchronousTestCase):
    """
    The sender process's gauges: only with one, and what it counted.
    """

    setUp = ScrapeTimeGaugeTests.setUp
    scrape = ScrapeTimeGaugeTests.scrape

    def test_none_without_the_process(self) -> None:
        """A server without a sender process exports no hq_sender_* series."""
        names = {name for name, _ in self.scrape()}
        self.assertEqual({name for name in names if name.startswith("hq_sender")}, set())

    def test_counts_and_state(self) -> None:
        """Readiness, the requests made by each process, the deaths."""
        from types import SimpleNamespace

        sender = SimpleNamespace(ready=True, sent_here=3, sent_by_child=40, deaths=0)
        self.metrics.watch_sender(sender)  # type: ignore[arg-type]
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_sender_up"), 1)
        self.assertEqual(value(samples, "hq_sender_requests_total", process="server"), 3)
        self.assertEqual(value(samples, "hq_sender_requests_total", process="sender"), 40)
        self.assertEqual(value(samples, "hq_sender_deaths_total"), 0)
        sender.ready, sender.deaths = False, 1
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_sender_up"), 0)
        self.assertEqual(value(samples, "hq_sender_deaths_total"), 1)


class DeliveryMetricsTests(SynchronousTestCase):
    """
    Pushes through the API and deliveries through a real Dispatch to a fake
    worker, then ``GET /metrics``.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.worker = FakeWorker(Reply(code=200))
        self.worker.route("/fail", Reply(code=503, body=b"busy"))
        self.worker.route("/hang", Reply(hang=True))
        self.stub = WorkerStub(self.worker)
        self.dispatch = Delivery(
            store=self.store,
            worker=WorkerClient(self.stub.http, self.clock, "HQ/test", 1024),
            clock=self.clock,
            dispatchers=1,
            workers_per_dispatcher=8,
            queue_size=100,
            shutdown_timeout=1,
        )
        self.metrics = ServerMetrics(
            self.store,
            self.dispatch,
            self.clock,
            max_workers=8,
            queue_size=100,
            version="1.2.3",
            commit_hash="abc",
            process=False,
        )
        self.metrics.observe(self.dispatch)
        self.dispatch.startService()
        self.addCleanup(self.dispatch.stopService)
        self.api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(),
            metrics=self.metrics,
        )
        self.client = StubTreq(self.api.resource())

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
        d = self.client.request(method, "http://hq.test" + path, **kwargs)
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0].decode()
        return response.code, content_type, body

    def push(self, path: str, **fields: Any) -> str:
        code, _, body = self.request("POST", "/job", json={"url": "http://w" + path, **fields})
        self.assertEqual(code, 200, body)
        self.stub.flush()
        job_id = re.search(rb'"id":"(\d+)"', body)
        assert job_id is not None
        return job_id.group(1).decode()

    def scrape(self, accept: str | None = None) -> Samples:
        headers = {"Accept": accept} if accept else {}
        code, content_type, body = self.request("GET", "/metrics", headers=headers)
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        return parse(body.decode("utf-8"))

    def test_outcomes_classes_and_durations(self) -> None:
        """After a few jobs every counter and histogram says what happened."""
        self.push("/ok")
        self.push("/ok")
        self.push("/fail")
        self.push("/hang", timeout=1)  # times out: no status, class "error"
        self.push("/hang")  # answered after 2.5 s
        stopped = self.push("/hang")  # stopped while running
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_jobs_running"), 3)
        self.assertEqual(value(samples, "hq_workers_busy"), 3)
        self.clock.advance(1)
        self.stub.flush()
        code, _, _ = self.request("POST", f"/job/{stopped}/stop")
        self.assertEqual(code, 200)
        self.stub.flush()
        self.clock.advance(1.5)
        self.assertEqual(self.worker.release(Reply(code=201)), 1)
        self.stub.flush()

        samples = self.scrape()
        self.assertEqual(value(samples, "hq_jobs_pushed_total"), 6)
        self.assertEqual(value(samples, "hq_jobs_finished_total", outcome="success"), 3)
        self.assertEqual(value(samples, "hq_jobs_finished_total", outcome="failure"), 2)
        self.assertEqual(value(samples, "hq_jobs_finished_total", outcome="canceled"), 1)
        self.assertEqual(value(samples, "hq_worker_responses_total", status_class="2xx"), 3)
        self.assertEqual(value(samples, "hq_worker_responses_total", status_class="5xx"), 1)
        self.assertEqual(value(samples, "hq_worker_responses_total", status_class="error"), 1)
        self.assertEqual(value(samples, "hq_worker_responses_total", status_class="4xx"), 0)
        success = {"outcome": "success"}
        self.assertEqual(value(samples, "hq_delivery_duration_seconds_count", **success), 3)
        self.assertAlmostEqual(value(samples, "hq_delivery_duration_seconds_sum", **success), 2.5)
        self.assertEqual(
            value(samples, "hq_delivery_duration_seconds_bucket", le="1.0", **success), 2
        )
        self.assertEqual(
            value(samples, "hq_delivery_duration_seconds_bucket", le="2.5", **success), 3
        )
        failure = {"outcome": "failure"}
        self.assertEqual(value(samples, "hq_delivery_duration_seconds_count", **failure), 2)
        self.assertEqual(value(samples, "hq_jobs_running"), 0)
        self.assertEqual(value(samples, "hq_jobs_waiting"), 0)
        self.assertEqual(value(samples, "hq_jobs_stored"), 6)

    def test_openmetrics_when_asked(self) -> None:
        """An Accept header asking for OpenMetrics gets it, ending with # EOF."""
        code, content_type, body = self.request(
            "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_metrics_off_is_404(self) -> None:
        """Without metrics (metrics = false) GET /metrics is a JSON 404."""
        self.api = HQApi(
            store=self.store,
            dispatch=self.dispatch,
            ids=IdGenerator(0, self.clock),
            clock=self.clock,
            config=Config(),
        )
        self.client = StubTreq(self.api.resource())
        code, content_type, body = self.request("GET", "/metrics")
        self.assertEqual(code, 404)
        self.assertIn("application/json", content_type)
        self.assertIn(b"metrics = false", body)


class RetryMetricsTests(SynchronousTestCase):
    """
    Attempts, retries, scheduled jobs and due lag, through a real Delivery
    with retry rules, a fake worker and a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.store = MemoryStore()
        self.worker = FakeWorker(Reply(code=200))
        self.worker.route("/fail", Reply(code=503, body=b"busy"))
        self.worker.route("/hang", Reply(hang=True))
        self.stub = WorkerStub(self.worker)
        self.dispatch = Delivery(
            store=self.store,
            worker=WorkerClient(self.stub.http, self.clock, "HQ/test", 1024),
            clock=self.clock,
            dispatchers=1,
            workers_per_dispatcher=8,
            queue_size=100,
            shutdown_timeout=1,
            rules=RetryRules(min_backoff=1, max_backoff=10),
            jitter=lambda: 1.0,
        )
        self.metrics = ServerMetrics(
            self.store,
            self.dispatch,
            self.clock,
            max_workers=8,
            queue_size=100,
            version="1",
            commit_hash="x",
            process=False,
        )
        self.metrics.observe(self.dispatch)
        self.dispatch.startService()
        self.addCleanup(self.dispatch.stopService)
        self.sequence = 0

    def add(self, path: str, retries: int = 0, run_at: int | None = None) -> Job:
        self.sequence += 1
        job = Job(
            id=first_id_at(int(self.clock.seconds() * 1000)) + self.sequence,
            url="http://w" + path,
            retries=retries,
            run_at=run_at,
        )
        self.successResultOf(self.store.create(job))
        self.dispatch.enqueue(job)
        self.stub.flush()
        return job

    def scrape(self) -> Samples:
        body, _ = self.successResultOf(Deferred.fromCoroutine(self.metrics.render("")))
        return parse(body.decode("utf-8"))

    def test_attempts_retries_and_scheduled(self) -> None:
        """Each attempt counts by outcome, each retry once; a pending retry is scheduled."""
        self.add("/fail", retries=2)
        self.add("/ok", retries=2)
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_attempts_total", outcome="failure"), 1)
        self.assertEqual(value(samples, "hq_attempts_total", outcome="success"), 1)
        self.assertEqual(value(samples, "hq_retries_scheduled_total"), 1)
        self.assertEqual(value(samples, "hq_jobs_scheduled"), 1)
        self.assertEqual(value(samples, "hq_jobs_waiting"), 1)
        self.clock.advance(1)  # attempt 2, then a retry 2 s later
        self.stub.flush()
        self.assertEqual(value(self.scrape(), "hq_retries_scheduled_total"), 2)
        self.clock.advance(2)  # attempt 3, the last
        self.stub.flush()
        stopped = self.add("/hang")
        self.successResultOf(self.store.stop(stopped.id, int(self.clock.seconds() * 1000)))
        self.dispatch.cancel(stopped.id)
        self.stub.flush()
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_attempts_total", outcome="failure"), 3)
        self.assertEqual(value(samples, "hq_attempts_total", outcome="success"), 1)
        self.assertEqual(value(samples, "hq_attempts_total", outcome="canceled"), 1)
        self.assertEqual(value(samples, "hq_retries_scheduled_total"), 2)
        self.assertEqual(value(samples, "hq_jobs_finished_total", outcome="failure"), 1)
        self.assertEqual(value(samples, "hq_jobs_scheduled"), 0)
        self.assertEqual(value(samples, "hq_jobs_waiting"), 0)

    def test_due_lag(self) -> None:
        """The due lag is the start time minus the due time of each attempt started."""
        now = int(self.clock.seconds() * 1000)
        self.add("/ok", run_at=now - 3_000)  # due 3 s ago: 3 s late
        self.add("/ok", run_at=now + 60_000)  # due in a minute
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_due_lag_seconds_count"), 1)
        self.assertAlmostEqual(value(samples, "hq_due_lag_seconds_sum"), 3)
        self.assertEqual(value(samples, "hq_jobs_scheduled"), 1)
        self.clock.advance(60)
        self.stub.flush()
        samples = self.scrape()
        self.assertEqual(value(samples, "hq_due_lag_seconds_count"), 2)
        self.assertAlmostEqual(value(samples, "hq_due_lag_seconds_sum"), 3)
        self.assertEqual(value(samples, "hq_due_lag_seconds_bucket", le="0.01"), 1)
        self.assertEqual(value(samples, "hq_jobs_scheduled"), 0)


class RealServerMetricsTests(SynchronousTestCase):
    """
    ``hq serve`` scraped over 127.0.0.1 after a few jobs.
    """

    def test_scrape_after_jobs(self) -> None:
        """The real server's exposition parses and counts the jobs, commits and process."""
        worker = RecordingWorker()
        self.addCleanup(worker.close)
        server = ServerProcess(self.mktemp()).start()
        self.addCleanup(server.stop)
        for _ in range(4):
            server.push(worker.url + "/ok")
        server.push("http://127.0.0.1:9/refused")

        def scrape() -> Samples:
            with urllib.request.urlopen(server.base + "/metrics", timeout=10) as response:
                self.assertTrue(response.headers["Content-Type"].startswith("text/plain"))
                return parse(response.read().decode("utf-8"))

        def all_finished() -> Samples | None:
            samples = scrape()
            done = sum(
                value(samples, "hq_jobs_finished_total", outcome=o)
                for o in ("success", "failure", "canceled")
            )
            return samples if done == 5 else None

        samples = wait_for(all_finished, 15, "5 finished jobs in the metrics")
        self.assertEqual(value(samples, "hq_jobs_pushed_total"), 5)
        self.assertEqual(value(samples, "hq_jobs_finished_total", outcome="success"), 4)
        self.assertEqual(value(samples, "hq_jobs_finished_total", outcome="failure"), 1)
        self.assertEqual(value(samples, "hq_worker_responses_total", status_class="2xx"), 4)
        self.assertEqual(value(samples, "hq_worker_responses_total", status_class="error"), 1)
        self.assertEqual(value(samples, "hq_jobs_stored"), 5)
        self.assertEqual(value(samples, "hq_jobs_waiting"), 0)
        self.assertEqual(value(samples, "hq_oldest_waiting_job_age_seconds"), 0)
        # 5 creates, 5 finishes and the open (a start is a write of its own
        # only when its push could not start the job at once): a few commits.
        self.assertGreaterEqual(value(samples, "hq_store_commit_duration_seconds_count"), 3)
        self.assertGreaterEqual(value(samples, "hq_store_writes_total"), 11)
        self.assertEqual(value(samples, "hq_store_commit_failures_total"), 0)
        self.assertGreater(value(samples, "process_resident_memory_bytes"), 0)
        self.assertNotIn(("hq_jobs_pushed_created", frozenset()), samples)


class AlertRuleTests(SynchronousTestCase):
    """
    contrib/prometheus: the example alerts use metrics that exist.
    """

    def test_alerts_use_exported_metrics(self) -> None:
        """Each hq_ metric an example alert names is exported by ServerMetrics."""
        try:
            import yaml
        except ImportError:
            raise SkipTest("PyYAML is not installed") from None
        with open(os.path.join(ROOT, "contrib", "prometheus", "hq-alerts.yml")) as f:
            rules = yaml.safe_load(f)["groups"][0]["rules"]
        self.assertGreaterEqual(len(rules), 3)
        metrics = ServerMetrics(
            MemoryStore(),
            RecordingDispatch(),
            Clock(),
            max_workers=1,
            queue_size=1,
            version="1",
            commit_hash="x",
            process=False,
        )
        from types import SimpleNamespace

        # A server with a sender process exports its gauges too.
        sender = SimpleNamespace(ready=True, sent_here=0, sent_by_child=0, deaths=0)
        metrics.watch_sender(sender)  # type: ignore[arg-type]
        body, _ = self.successResultOf(Deferred.fromCoroutine(metrics.render("")))
        exported = {name for name, _ in parse(body.decode("utf-8"))}
        for rule in rules:
            self.assertIn("alert", rule)
            for name in re.findall(r"\bhq_[a-z_]+", rule["expr"]):
                self.assertIn(name, exported, rule["alert"])
