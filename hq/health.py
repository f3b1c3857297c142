"""
The health check behind ``GET /health``, for load balancers and service managers.

Healthy means: the store can be written now (a small probe write goes through
the store's batched writer and is committed, so a full disk or an I/O error
shows) and the dispatchers run (not stopped or shutting down). Concurrent
checks share one probe, and a probe that does not answer within
:data:`PROBE_TIMEOUT` seconds counts as a failure, so the check itself never hangs.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

#: Seconds a probe write may take before the store counts as unwritable.
PROBE_TIMEOUT = 5.0


@attrs.frozen
class HealthReport:
    """
    The result of one check: each check's name with whether it passed and
    a short text for a person.
    """

    checks: dict[str, tuple[bool, str]]

    @property
    def healthy(self) -> bool:
        """
        Whether every check passed.
        """
        return all(ok for ok, _ in self.checks.values())

    def to_json(self) -> str:
        """
        Return the ``200`` body: ``{"healthy": true, "checks": {name: detail}}``.
        """
        details = {name: detail for name, (_, detail) in self.checks.items()}
        return json.dumps({"healthy": self.healthy, "checks": details}, separators=(",", ":"))

    def problem(self) -> str:
        """
        Return the failed checks for the ``503`` error message, e.g.
        ``unhealthy: store: storage unavailable: disk I/O error``.
        """
        failed = [f"{name}: {detail}" for name, (ok, detail) in self.checks.items() if not ok]
        return "unhealthy: " + "; ".join(failed)


@attrs.define
class HealthCheck:
    """
    Checks the store and the dispatchers.

    :param probe: makes a probe write; a Deferred that fails when the store
        cannot be written (``IJobStore.probe_write``).
    :param dispatch_running: whether the dispatchers run.
    :param clock: for the probe timeout and its duration.
    """

    _probe: Callable[[], Deferred[None]]
    _dispatch_running: Callable[[], bool]
    _clock: IReactorTime
    _timeout: float = PROBE_TIMEOUT
    _waiting: list[Deferred[tuple[bool, str]]] | None = None

    async def check(self) -> HealthReport:
        """
        Return the report; never fails.
        """
        store = await self._store_check()
        if self._dispatch_running():
            dispatch = (True, "running")
        else:
            dispatch = (False, "not running (starting or shutting down)")
        return HealthReport({"store": store, "dispatchers": dispatch})

    def _store_check(self) -> Deferred[tuple[bool, str]]:
        answer: Deferred[tuple[bool, str]] = Deferred()
        if self._waiting is not None:
            # A probe is in flight: share its result.
            self._waiting.append(answer)
            return answer
        self._waiting = [answer]
        began = self._clock.seconds()
        try:
            probe = self._probe()
        except Exception:
            probe = Deferred()
            probe.errback(Failure())
        probe.addTimeout(self._timeout, self._clock)

        def passed(_: object) -> tuple[bool, str]:
            ms = (self._clock.seconds() - began) * 1000
            return True, f"writable (probe committed in {ms:.1f} ms)"

        def failed(reason: Failure) -> tuple[bool, str]:
            if reason.check(TimeoutError):
                return False, f"a probe write did not finish within {self._timeout:g} s"
            return False, str(reason.value) or reason.getErrorMessage()

        def tell(result: tuple[bool, str]) -> None:
            waiting, self._waiting = self._waiting or [], None
            for d in waiting:
                d.callback(result)

        probe.addCallbacks(passed, failed).addCallback(tell)
        return answer
