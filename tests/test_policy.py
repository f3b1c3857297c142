"""
Tests for hq.policy: what follows an attempt, the backoff and Retry-After.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hq.model import STOPPED, Job
from hq.policy import (
    AttemptResult,
    Finish,
    Retry,
    RetryRules,
    after_attempt,
    backoff_seconds,
    retry_after_seconds,
)

#: Now, in ms (2023-11-14T22:13:20Z).
NOW = 1_700_000_000_000
RULES = RetryRules(min_backoff=1, max_backoff=3600)
FAILED = AttemptResult(success=False, status_code=500, err="Internal Server Error", output="x")


def job(attempts: int, retries: int) -> Job:
    return Job(id=1, url="http://w/", attempts=attempts, retries=retries)


class AfterAttemptTests(SynchronousTestCase):
    """
    The decision after each kind of attempt.
    """

    def test_success_finishes(self) -> None:
        """A 2xx finishes the job a success, retries left or not."""
        result = AttemptResult(success=True, status_code=204, output="done")
        decision = after_attempt(job(1, 3), result, NOW, RULES, 1.0)
        assert isinstance(decision, Finish)
        self.assertEqual(
            (decision.outcome.status, decision.outcome.status_code, decision.outcome.output),
            ("success", 204, "done"),
        )

    def test_failure_with_attempts_left_retries_after_the_backoff(self) -> None:
        """Attempt 1 of 3 failed: retry in 1 s (full jitter), showing the failure."""
        decision = after_attempt(job(1, 2), FAILED, NOW, RULES, 1.0)
        assert isinstance(decision, Retry)
        self.assertEqual(decision.at, NOW + 1000)
        self.assertEqual((decision.last.status_code, decision.last.err), (500, FAILED.err))

    def test_last_failure_finishes_a_failure(self) -> None:
        """Attempt retries + 1 failed: the job is a failure."""
        decision = after_attempt(job(3, 2), FAILED, NOW, RULES, 1.0)
        assert isinstance(decision, Finish)
        self.assertEqual(decision.outcome.status, "failure")

    def test_no_retries_means_one_attempt(self) -> None:
        """retries 0 (the default, as Go): the first failure is final."""
        self.assertIsInstance(after_attempt(job(1, 0), FAILED, NOW, RULES, 1.0), Finish)

    def test_a_stopped_attempt_finishes_canceled_never_retried(self) -> None:
        """A stop wins over retries."""
        result = AttemptResult(success=False, stopped=True)
        decision = after_attempt(job(1, 5), result, NOW, RULES, 1.0)
        assert isinstance(decision, Finish)
        self.assertEqual((decision.outcome.status, decision.outcome.err), ("canceled", STOPPED))

    def test_retry_after_on_429_and_503_waits_at_least_that(self) -> None:
        """Retry-After: 120 on a 429 or 503 waits 120 s instead of 1 s."""
        for code in (429, 503):
            result = AttemptResult(success=False, status_code=code, retry_after="120")
            decision = after_attempt(job(1, 1), result, NOW, RULES, 1.0)
            assert isinstance(decision, Retry)
            self.assertEqual(decision.at, NOW + 120_000, code)

    def test_retry_after_on_other_codes_is_not_honoured(self) -> None:
        """A 500 with Retry-After keeps the plain backoff."""
        result = AttemptResult(success=False, status_code=500, retry_after="120")
        decision = after_attempt(job(1, 1), result, NOW, RULES, 1.0)
        assert isinstance(decision, Retry)
        self.assertEqual(decision.at, NOW + 1000)

    def test_retry_after_never_shortens_the_backoff(self) -> None:
        """Retry-After: 0 after attempt 5 still waits the 16 s backoff."""
        result = AttemptResult(success=False, status_code=503, retry_after="0")
        decision = after_attempt(job(5, 9), result, NOW, RULES, 1.0)
        assert isinstance(decision, Retry)
        self.assertEqual(decision.at, NOW + 16_000)

    def test_retry_after_is_capped_at_the_max_backoff(self) -> None:
        """A Retry-After of a week waits retry_max_backoff."""
        rules = RetryRules(min_backoff=1, max_backoff=60)
        result = AttemptResult(success=False, status_code=429, retry_after="604800")
        decision = after_attempt(job(1, 1), result, NOW, rules, 1.0)
        assert isinstance(decision, Retry)
        self.assertEqual(decision.at, NOW + 60_000)


class BackoffTests(SynchronousTestCase):
    """
    ``min(max, min * 2^(n-1))``, jittered to between half and all of it.
    """

    def test_doubles_from_the_minimum_up_to_the_maximum(self) -> None:
        """Full jitter: 1, 2, 4, ... 2048, then the 3600 s cap."""
        waits = [backoff_seconds(n, RULES, 1.0) for n in range(1, 15)]
        self.assertEqual(waits[:12], [float(2**k) for k in range(12)])
        self.assertEqual(waits[12:], [3600.0, 3600.0])

    def test_jitter_zero_is_half(self) -> None:
        """The least jitter halves the wait."""
        self.assertEqual(backoff_seconds(3, RULES, 0.0), 2.0)

    def test_fractions_of_seconds(self) -> None:
        """A fractional minimum works (0.25 s, 0.5 s, ...)."""
        rules = RetryRules(min_backoff=0.25, max_backoff=10)
        self.assertEqual(backoff_seconds(2, rules, 1.0), 0.5)

    @given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0, max_value=1))
    def test_always_between_half_and_all_of_the_capped_wait(self, n: int, jitter: float) -> None:
        """Any attempt number and jitter stay in range; a huge n does not overflow."""
        full = min(3600.0, 2.0 ** min(n - 1, 64))
        wait = backoff_seconds(n, RULES, jitter)
        self.assertTrue(full / 2 <= wait <= full, (n, jitter, wait))


class RetryAfterTests(SynchronousTestCase):
    """
    Retry-After: delta-seconds or an HTTP date; anything else is ignored.
    """

    def test_delta_seconds(self) -> None:
        """``120`` is 120 seconds."""
        self.assertEqual(retry_after_seconds(" 120 ", NOW), 120.0)

    def test_http_date(self) -> None:
        """An HTTP date is the seconds from now until then (0 if past)."""
        self.assertEqual(retry_after_seconds("Tue, 14 Nov 2023 22:15:20 GMT", NOW), 120.0)
        self.assertEqual(retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", NOW), 0.0)

    def test_garbage_is_none(self) -> None:
        """Garbage, negative numbers and an empty header are ignored, never an error."""
        for value in (
            "",
            "soon",
            "-5",
            "1.5",
            "Tue, 99 Nov 2023 25:61:00 GMT",
            "\x00",
            "\xb2",
            "\u0663",
            None,
        ):
            self.assertIsNone(retry_after_seconds(value, NOW), value)
