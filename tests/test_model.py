"""
Tests for hq.model: status rules and the JSON shape.
"""

from __future__ import annotations

import json

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hq.ids import first_id_at
from hq.model import (
    ATTEMPT_OUTPUT_BYTES,
    Attempt,
    Job,
    JobPage,
    JobState,
    ListQuery,
    Outcome,
    _copier,
    _evolve_job,
    check_regexp,
    format_time,
    job_dict,
    job_json,
)
from tests.test_api import JOB_KEYS

T = 1_572_334_346_054  # 2019-10-29T07:32:26.054Z


class StatusTests(SynchronousTestCase):
    """
    The derived status, in the Go precedence.
    """

    def test_status_precedence(self) -> None:
        """running/waiting (canceling when stopped), then failure, success, canceled."""
        job = Job(id=1, url="http://x/")
        self.assertEqual(job.status, "waiting")
        self.assertEqual(Job(id=1, url="u", canceled=True).status, "canceling")
        self.assertEqual(Job(id=1, url="u", state=JobState.RUNNING).status, "running")
        self.assertEqual(
            Job(id=1, url="u", state=JobState.RUNNING, canceled=True).status, "canceling"
        )
        self.assertEqual(job.finished(Outcome(finished_at=T, failure=True)).status, "failure")
        self.assertEqual(job.finished(Outcome(finished_at=T, success=True)).status, "success")
        self.assertEqual(job.finished(Outcome(finished_at=T, canceled=True)).status, "canceled")
        self.assertEqual(Job(id=1, url="u", state=JobState.FINISHED).status, "unfinished")
        self.assertEqual(job.finished(Outcome(finished_at=T)).status, "unknown")

    def test_outcome_status_is_the_finished_job_status(self) -> None:
        """Outcome.status is the status a job gets when finished with that outcome."""
        job = Job(id=1, url="u", state=JobState.RUNNING, canceled=True)
        for flags in range(8):
            outcome = Outcome(
                finished_at=T,
                success=bool(flags & 1),
                failure=bool(flags & 2),
                canceled=bool(flags & 4),
            )
            self.assertEqual(outcome.status, job.finished(outcome).status)

    def test_reset_clears_outcome(self) -> None:
        """reset() gives a waiting job with every outcome field cleared."""
        job = Job(id=1, url="u", attempts=2).finished(
            Outcome(finished_at=T, failure=True, status_code=500, err="e", output="o")
        )
        self.assertEqual(job.reset(), Job(id=1, url="u", attempts=0))


class JsonTests(SynchronousTestCase):
    """
    The wire JSON of a job and a page.
    """

    def test_job_json_keys_types_and_order(self) -> None:
        """Every key present, alphabetical, id a string, times RFC 3339 ms Z."""
        job = Job(
            id=first_id_at(T),
            url="http://w/",
            payload='{"a":1}',
            headers={"X": "y"},
        ).finished(Outcome(finished_at=T + 50, success=True, status_code=200, output="<ok>"))
        text = json.dumps(job_dict(job, T + 60))
        data = json.loads(text)
        self.assertEqual(list(data), sorted(data))
        self.assertEqual(data["id"], str(first_id_at(T)))
        self.assertEqual(data["createdAt"], "2019-10-29T07:32:26.054Z")
        self.assertEqual(data["finishedAt"], "2019-10-29T07:32:26.104Z")
        self.assertIsNone(data["startedAt"])
        self.assertEqual(data["payload"], {"a": 1})
        self.assertEqual(data["statusCode"], 200)
        self.assertEqual(data["status"], "success")
        self.assertEqual(list(data), JOB_KEYS)

    @settings(max_examples=100, deadline=None)
    @given(st.data())
    def test_job_json_is_the_json_of_each_field(self, data: st.DataObject) -> None:
        """
        ``job_json`` (one f-string, for speed) writes what ``json.dumps`` writes
        for each field's value, keys in the order above (alphabetical; the
        headers in the client's order): any text (quotes, backslashes, control
        characters, non-ASCII), ``None`` where a field allows it, every state
        and time.
        """
        text = st.text(max_size=12)
        maybe_text = st.none() | text
        maybe_ms = st.none() | st.integers(0, 4_102_444_800_000)
        now = data.draw(st.integers(0, 4_102_444_800_000))
        payload = data.draw(st.none() | st.dictionaries(text, st.integers() | text, max_size=3))
        job = Job(
            id=data.draw(st.integers(1, 2**63 - 1)),
            url=data.draw(text),
            name=data.draw(text),
            comment=data.draw(text),
            # Stored as compact JSON text, which job_json embeds as it is.
            payload=None
            if payload is None
            else json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
            headers=data.draw(st.none() | st.dictionaries(text, text, max_size=3)),
            timeout=data.draw(st.integers(0, 86_400)),
            state=data.draw(st.sampled_from(JobState)),
            started_at=data.draw(maybe_ms),
            finished_at=data.draw(maybe_ms),
            success=data.draw(st.booleans()),
            failure=data.draw(st.booleans()),
            canceled=data.draw(st.booleans()),
            status_code=data.draw(st.none() | st.integers(100, 599)),
            err=data.draw(text),
            output=data.draw(text),
            output_truncated=data.draw(st.booleans()),
            attempts=data.draw(st.integers(0, 100)),
            retries=data.draw(st.integers(0, 100)),
            run_at=data.draw(maybe_ms),
            idempotency_key=data.draw(maybe_text),
            schedule_id=data.draw(st.none() | st.integers(1, 2**63 - 1)),
            flow_key=data.draw(text),
            callback_url=data.draw(maybe_text),
            failure_callback_url=data.draw(maybe_text),
            callback_job_id=data.draw(st.none() | st.integers(1, 2**63 - 1)),
        )
        expected = {
            "attempts": job.attempts,
            "callbackJobId": None if job.callback_job_id is None else str(job.callback_job_id),
            "callbackUrl": job.callback_url,
            "canceled": job.canceled,
            "comment": job.comment,
            "createdAt": format_time(job.created_at),
            "err": job.err,
            "failure": job.failure,
            "failureCallbackUrl": job.failure_callback_url,
            "finishedAt": format_time(job.finished_at),
            "flowKey": job.flow_key,
            "headers": job.headers,
            "id": str(job.id),
            "idempotencyKey": job.idempotency_key,
            "name": job.name,
            "output": job.output,
            "outputTruncated": job.output_truncated,
            "payload": payload,
            "retries": job.retries,
            "runAt": format_time(job.run_at) if job.scheduled(now) else None,
            "running": job.running,
            "scheduleId": None if job.schedule_id is None else str(job.schedule_id),
            "startedAt": format_time(job.started_at),
            "status": job.status_at(now),
            "statusCode": job.status_code,
            "success": job.success,
            "timeout": job.timeout,
            "url": job.url,
            "waiting": job.waiting,
        }
        self.assertEqual(
            job_json(job, now),
            json.dumps(expected, ensure_ascii=False, separators=(",", ":")),
        )

    def test_format_time_keeps_three_digits(self) -> None:
        """Milliseconds are always three digits."""
        self.assertEqual(format_time(T - 54), "2019-10-29T07:32:26.000Z")
        self.assertIsNone(format_time(None))

    def test_format_time_edges(self) -> None:
        """The epoch, a leap day and the last second of year 9999 format as RFC 3339."""
        self.assertEqual(format_time(0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(format_time(951_782_400_999), "2000-02-29T00:00:00.999Z")
        self.assertEqual(format_time(253_402_300_799_999), "9999-12-31T23:59:59.999Z")

    def test_page_json(self) -> None:
        """A page has jobs, hasNext, next (a string, only when there is one) and count."""
        job = Job(id=5, url="u")
        self.assertEqual(json.loads(JobPage([job], next_id=9).to_json(0))["next"], "9")
        empty = json.loads(JobPage([], next_id=None).to_json(0))
        self.assertEqual(empty, {"jobs": [], "hasNext": False, "count": 0})


class ListQueryTests(SynchronousTestCase):
    """
    Filters of a listing.
    """

    def test_term_matches_name_id_comment_url_status(self) -> None:
        """term is searched in name, id, comment, url and status."""
        job = Job(id=123456, url="http://host/path", name="mail", comment="weekly")
        for term in ("mai", "3456", "week", "host/p", "^waiting$"):
            self.assertTrue(ListQuery(term=term).matches(job), term)
        self.assertFalse(ListQuery(term="nothing").matches(job))

    def test_name_and_status(self) -> None:
        """name is a regexp on the name only; status is exact."""
        job = Job(id=1, url="http://mail/", name="report")
        self.assertFalse(ListQuery(name="mail").matches(job))
        self.assertTrue(ListQuery(name="^rep").matches(job))
        self.assertTrue(ListQuery(status="waiting").matches(job))
        self.assertFalse(ListQuery(status="wait").matches(job))

    def test_re2_rejects_lookaround_and_is_linear(self) -> None:
        """Perl look-arounds are refused; a catastrophic pattern answers at once."""
        self.assertIsNotNone(check_regexp("(?=x)"))
        self.assertIsNone(check_regexp("(a+)+$"))
        self.assertFalse(
            ListQuery(name="(a+)+$").matches(Job(id=1, url="u", name="a" * 5000 + "b"))
        )


class DueTimeTests(SynchronousTestCase):
    """
    Due times, ``scheduled``, idempotent comparisons and the attempt record (SPEC §11).
    """

    def test_a_job_due_later_is_scheduled_until_then(self) -> None:
        """status_at is scheduled before run_at, waiting from then on; runAt shows till due."""
        job = Job(id=first_id_at(T), url="u", run_at=T + 5000)
        self.assertEqual(
            (job.status_at(T + 4999), job.status_at(T + 5000)), ("scheduled", "waiting")
        )
        self.assertEqual(job_dict(job, T)["runAt"], "2019-10-29T07:32:31.054Z")
        self.assertIsNone(job_dict(job, T + 5000)["runAt"])
        self.assertEqual(job.due_at, T + 5000)
        self.assertEqual(Job(id=first_id_at(T), url="u").due_at, T)

    def test_a_stopped_or_running_job_is_never_scheduled(self) -> None:
        """Only a waiting job that is not being stopped can be scheduled."""
        job = Job(id=first_id_at(T), url="u", run_at=T + 5000)
        running = attrs.evolve(job, state=JobState.RUNNING)
        self.assertEqual(running.status_at(T), "running")
        self.assertEqual(job.stopped(T).status_at(T), "canceled")

    def test_same_request_compares_payloads_as_json_values(self) -> None:
        """Key order and spacing do not matter; url, name and payload do."""
        a = Job(id=1, url="u", payload='{"a":1,"b":[1,2]}')
        self.assertTrue(a.same_request(attrs.evolve(a, id=2, payload='{"b":[1,2],"a":1}')))
        self.assertFalse(a.same_request(attrs.evolve(a, payload='{"a":2,"b":[1,2]}')))
        self.assertFalse(a.same_request(attrs.evolve(a, url="v")))
        self.assertFalse(a.same_request(attrs.evolve(a, name="other")))
        self.assertFalse(a.same_request(attrs.evolve(a, payload=None)))
        self.assertTrue(a.same_request(attrs.evolve(a, comment="may differ", timeout=9)))

    def test_attempt_output_is_cut_at_4_kib_on_a_character_boundary(self) -> None:
        """The history keeps 4 KiB of output, never half a character."""
        job = Job(id=1, url="u", attempts=2, started_at=T)
        outcome = Outcome(finished_at=T + 1, failure=True, output="é" * 3000)
        attempt = Attempt.of(job, outcome)
        self.assertEqual((attempt.attempt, attempt.started_at), (2, T))
        self.assertEqual(len(attempt.output.encode("utf-8")), ATTEMPT_OUTPUT_BYTES)
        self.assertEqual(set(attempt.output), {"é"})

    def test_a_retried_job_shows_the_last_attempt_and_waits(self) -> None:
        """retried() keeps the failure's code, err and output, waiting at its due time."""
        running = Job(id=1, url="u", state=JobState.RUNNING, attempts=1, started_at=T)
        last = Outcome(finished_at=T + 1, failure=True, status_code=503, err="e", output="o")
        retried = running.retried(T + 900, last)
        self.assertEqual(
            (retried.status, retried.run_at, retried.status_code, retried.err, retried.output),
            ("waiting", T + 900, 503, "e", "o"),
        )
        self.assertFalse(retried.failure)


class CopyTests(SynchronousTestCase):
    """
    The job copies the model makes (started, finished, retried...) are
    written once from the fields (``hq.model._copier``), not by ``attrs.evolve``.
    """

    def _every_field_set(self) -> Job:
        values: dict[str, object] = {}
        for field in attrs.fields(Job):
            if field.name == "id":
                values["id"] = first_id_at(T) + 7
            elif field.name == "state":
                values["state"] = JobState.RUNNING
            elif field.name == "headers":
                values["headers"] = {"X-A": "1"}
            elif field.type in ("bool",):
                values[field.name] = True
            elif "int" in str(field.type):
                values[field.name] = len(field.name)
            else:
                values[field.name] = f"{field.name}-value"
        return Job(**values)  # type: ignore[arg-type]

    def test_a_copy_is_what_evolve_gives(self) -> None:
        """Every field is kept but those changed, as attrs.evolve does."""
        job = self._every_field_set()
        for field in attrs.fields(Job):
            self.assertNotEqual(getattr(job, field.name), field.default, field.name)
        self.assertEqual(_evolve_job(job), attrs.evolve(job))
        changed = _evolve_job(job, state=JobState.FINISHED, err="boom", started_at=None)
        self.assertEqual(
            changed, attrs.evolve(job, state=JobState.FINISHED, err="boom", started_at=None)
        )
        self.assertEqual(
            (changed.state, changed.err, changed.started_at), (JobState.FINISHED, "boom", None)
        )
        self.assertIsNot(changed, job)
        self.assertEqual(job.state, JobState.RUNNING)

    def test_the_model_rules_copy_every_field(self) -> None:
        """finished() and marked_running() keep the fields they do not change."""
        job = self._every_field_set()
        outcome = Outcome(finished_at=T + 5, success=True, status_code=200, output="ok")
        self.assertEqual(
            job.finished(outcome),
            attrs.evolve(
                job,
                state=JobState.FINISHED,
                finished_at=T + 5,
                success=True,
                failure=False,
                canceled=False,
                status_code=200,
                err="",
                output="ok",
                output_truncated=False,
            ),
        )
        self.assertEqual(
            job.marked_running(T + 9, 4),
            attrs.evolve(job, state=JobState.RUNNING, started_at=T + 9, attempts=4),
        )

    def test_an_unknown_field_is_refused(self) -> None:
        """A name that is no field raises TypeError, as with evolve."""
        job = Job(id=1, url="u")
        self.assertRaises(TypeError, _evolve_job, job, nope=1)
        self.assertRaises(TypeError, _evolve_job, job, JobState.RUNNING)

    def test_a_class_with_a_keyword_only_field_is_refused(self) -> None:
        """Every field must be an __init__ argument given by position."""

        @attrs.frozen
        class KeywordOnly:
            value: int = attrs.field(kw_only=True)

        @attrs.frozen
        class NotInInit:
            value: int = attrs.field(init=False, default=0)

        self.assertRaises(TypeError, _copier, KeywordOnly)
        self.assertRaises(TypeError, _copier, NotInInit)
