"""``hq.sdk.asgi`` is :mod:`hq_sdk.asgi` (the code lives in sdk/src/hq_sdk)."""

from hq_sdk.asgi import *  # noqa: F403
