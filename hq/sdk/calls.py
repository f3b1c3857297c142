"""``hq.sdk.calls`` is :mod:`hq_sdk.calls` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.calls import *  # noqa: F403
