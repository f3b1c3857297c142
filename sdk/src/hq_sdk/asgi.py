"""
Serve a job function as an ASGI application: for uvicorn or any ASGI server, mounted in a
FastAPI or Starlette app (``app.mount("/hq", asgi_app(...))``).

Example::

    from hq_sdk.asgi import asgi_app
    from hq_sdk.receiver import Receiver

    async def send_mail(job):
        ...  # job.id, job.payload
        return {"sent": True}

    app = asgi_app(send_mail, Receiver(["whsec_..."]))

In a FastAPI or Starlette route, await :meth:`~hq_sdk.receiver.Receiver.handle_async` with
the request's headers and body instead (docs/sdk.md).

Standard library only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hq_sdk.receiver import Answer, AsyncWork, Receiver

#: Bodies larger than this are refused with 413 (HQ's own limit is 4 MiB by default).
MAX_BODY_BYTES = 16 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """
    Return the request body from ASGI ``receive`` messages (``None`` when it is over
    ``limit`` bytes, or the client went away).
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_answer(answer: Answer, send: Send) -> None:
    """
    Send ``answer`` as the ASGI response.
    """
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def asgi_app(work: AsyncWork, receiver: Receiver, max_body: int = MAX_BODY_BYTES) -> ASGIApp:
    """
    Return an ASGI application that answers each ``POST`` with
    ``await receiver.handle_async(headers, body, work)`` (any path; 405 for other methods,
    413 for a body over ``max_body`` bytes). ``work`` may be a coroutine function; an
    exception of it propagates to the server (a 500 answer: HQ retries the job if it has
    retries left). Lifespan events are accepted and ignored.
    """

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            answer = Answer.json(405, {"error": "HQ delivers jobs with POST"}, [("Allow", "POST")])
            await send_answer(answer, send)
            return
        body = await read_body(receive, max_body)
        if body is None:
            await send_answer(Answer.json(413, {"error": "the body is too large"}), send)
            return
        answer = await receiver.handle_async(scope.get("headers", []), body, work)
        await send_answer(answer, send)

    return application
