"""``hq.sdk.receiver`` is :mod:`hq_sdk.receiver` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.receiver import *  # noqa: F403
