"""
Delivery: getting waiting jobs to their workers, one room per job.

- :mod:`hq.delivery.feed`: the store -> a bounded in-memory queue in start order.
- :mod:`hq.delivery.runner`: the dispatcher loops, their semaphores, one attempt.
- :mod:`hq.delivery.outcomes`: recording outcomes, the history, the observers.
- :mod:`hq.delivery.shutdown`: waiting for runs at stop, aborting after the timeout.
- :mod:`hq.delivery.engine`: :class:`Delivery`, the service that joins them.

What follows an attempt is decided by the pure :func:`hq.policy.after_attempt`.
"""

from hq.delivery.engine import Delivery
from hq.delivery.outcomes import FINISH_ATTEMPTS
from hq.delivery.runner import INTERNAL_ERROR
from hq.store import STORE_RETRY_SECONDS

__all__ = ["FINISH_ATTEMPTS", "INTERNAL_ERROR", "STORE_RETRY_SECONDS", "Delivery"]
