"""
Serve a job function as a WSGI application: for gunicorn or any WSGI server, mounted in a
Flask app (werkzeug's ``DispatcherMiddleware``) or beside Django.

Example::

    from hq_sdk.receiver import Receiver
    from hq_sdk.wsgi import wsgi_app

    def send_mail(job):
        ...  # job.id, job.payload
        return {"sent": True}

    application = wsgi_app(send_mail, Receiver(["whsec_..."]))

In a Flask or Django view, call :meth:`~hq_sdk.receiver.Receiver.handle` with the request's
headers and body instead (docs/sdk.md).

Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from hq_sdk.receiver import Answer, Receiver, Work

#: Bodies larger than this are refused with 413 (HQ's own limit is 4 MiB by default).
MAX_BODY_BYTES = 16 * 1024 * 1024

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def environ_headers(environ: dict[str, Any]) -> dict[str, str]:
    """
    Return the request headers of a WSGI ``environ``, names in lower case.
    """
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers[key.replace("_", "-").lower()] = value
    return headers


def read_body(environ: dict[str, Any], limit: int = MAX_BODY_BYTES) -> bytes | None:
    """
    Return the request body of a WSGI ``environ`` (``None`` when it is over ``limit``).
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return None
    return environ["wsgi.input"].read(length) if length > 0 else b""


def _send(answer: Answer, start_response: StartResponse) -> list[bytes]:
    phrase = HTTPStatus(answer.status).phrase
    headers = [*answer.headers, ("Content-Length", str(len(answer.body)))]
    start_response(f"{answer.status} {phrase}", headers)
    return [answer.body]


def wsgi_app(work: Work, receiver: Receiver, max_body: int = MAX_BODY_BYTES) -> WSGIApp:
    """
    Return a WSGI application that answers each ``POST`` with
    ``receiver.handle(headers, body, work)`` (any path; 405 for other methods, 413 for a
    body over ``max_body`` bytes). An exception of ``work`` propagates to the server (a
    500 answer: HQ retries the job if it has retries left).
    """

    def application(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            answer = Answer.json(405, {"error": "HQ delivers jobs with POST"}, [("Allow", "POST")])
            return _send(answer, start_response)
        body = read_body(environ, max_body)
        if body is None:
            return _send(Answer.json(413, {"error": "the body is too large"}), start_response)
        return _send(receiver.handle(environ_headers(environ), body, work), start_response)

    return application
