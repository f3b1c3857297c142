"""``hq.sdk.wsgi`` is :mod:`hq_sdk.wsgi` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.wsgi import *  # noqa: F403
