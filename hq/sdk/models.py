"""``hq.sdk.models`` is :mod:`hq_sdk.models` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.models import *  # noqa: F403
