"""
How HQ connects to a host named in a URL (a worker's, or the API's for
:class:`hq.client.HQClient`), as Twisted's ``HostnameEndpoint`` would, but:

- an address (``127.0.0.1``, ``::1``) is connected to directly
  (:func:`address_endpoint`), not resolved in a thread first;
- a name is resolved at every connection through the reactor's resolver,
  and its addresses are tried in turn, the next one as soon as an attempt
  fails or 0.3 s after the last while that one is still connecting
  (:class:`NameEndpoint`, :func:`connect_in_turn`; RFC 8305, as Go's dialer
  and curl do, where ``HostnameEndpoint`` waits the 0.3 s even after a
  failure, twisted/twisted#9345);
- the outbound guard (:mod:`hq.guard`), when given, is asked about every
  address before it is connected to.

:class:`HostEndpoints` is the ``Agent`` endpoint factory made of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from hq.guard import DeniedAddress, GuardedResolver, NetworkGuard

#: Seconds to wait for a TCP connection (``HostnameEndpoint``'s default).
CONNECT_TIMEOUT = 30


@implementer(IStreamClientEndpoint)
class _Refused:
    """
    An endpoint that fails every connection with ``error`` (a denied address).
    """

    def __init__(self, error: Exception) -> None:
        self._error = error

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        return fail(self._error)


def address_endpoint(
    reactor: Any, host: str, port: int, guard: NetworkGuard | None = None
) -> IStreamClientEndpoint | None:
    """
    Return the endpoint to ``host:port`` when ``host`` is an IP address
    (``127.0.0.1``, ``::1``; not one with a zone), or ``None`` for a name.

    Twisted's ``HostnameEndpoint`` takes an address as it takes a name: it
    encodes it (IDNA), defines a resolution receiver class (with its
    interface declarations), hands the host to ``getaddrinfo`` in a thread
    of the reactor's pool and back, and arms its timer for the next address
    to try. For a worker that closes its connections (HTTP/1.0,
    ``Connection: close``) that is one connection per job, and it was a
    third of HQ's CPU per job. An address needs none of it; ``guard`` is
    asked about it here, as about each address a name resolves to.
    """
    if isIPAddress(host):
        endpoint_type: Any = TCP4ClientEndpoint
    elif "%" not in host and isIPv6Address(host):
        endpoint_type = TCP6ClientEndpoint
    else:
        return None
    if guard and guard.denies(host):
        return _Refused(DeniedAddress(host, [host]))
    endpoint: IStreamClientEndpoint = endpoint_type(reactor, host, port, timeout=CONNECT_TIMEOUT)
    return endpoint


@implementer(IResolutionReceiver)
class _Addresses:
    """
    Collects the addresses of one resolution; ``done`` fires with them.
    """

    def __init__(self) -> None:
        self.addresses: list[IAddress] = []
        self.done: Deferred[list[IAddress]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


#: Seconds before the next address of a name is tried while the attempt on
#: the last one is still connecting (RFC 8305's connection attempt delay;
#: Twisted's ``HostnameEndpoint`` and Go's dialer wait as long).
ATTEMPT_DELAY = 0.3


def address_endpoints(reactor: Any, addresses: Sequence[IAddress], port: int) -> list[Any]:
    """
    Return a TCP endpoint to each IPv4 and IPv6 address of ``addresses``.
    """
    endpoints: list[Any] = []
    for address in addresses:
        if isinstance(address, IPv4Address):
            endpoints.append(TCP4ClientEndpoint(reactor, address.host, port, CONNECT_TIMEOUT))
        elif isinstance(address, IPv6Address):
            endpoints.append(TCP6ClientEndpoint(reactor, address.host, port, CONNECT_TIMEOUT))
    return endpoints


def connect_in_turn(reactor: Any, endpoints: list[Any], protocolFactory: Any) -> Deferred[Any]:
    """
    Connect through the first of ``endpoints`` that connects: try the first;
    try the next as soon as an attempt fails, or after :data:`ATTEMPT_DELAY`
    while the attempts made are still connecting; the first connection made
    wins and the other attempts are cancelled. Fails with the last failure
    when every attempt failed.

    ``HostnameEndpoint`` waits the delay even after an attempt failed
    (twisted/twisted#9345): a worker listening on 127.0.0.1 only, named
    ``localhost`` where that resolves to ``::1`` first, cost 300 ms per
    connection, that is per job when the worker closes its connections.
    """
    remaining = iter(endpoints)
    pending: list[Deferred[Any]] = []
    failures: list[Failure] = []
    timer: Any = None
    over = False

    def stop_trying() -> None:
        nonlocal over, timer
        over = True
        if timer is not None and timer.active():
            timer.cancel()
        timer = None
        for attempt in list(pending):
            attempt.cancel()

    result: Deferred[Any] = Deferred(lambda _: stop_trying())

    def try_next() -> None:
        nonlocal over, timer
        if timer is not None and timer.active():
            timer.cancel()
        timer = None
        endpoint = next(remaining, None)
        if endpoint is None:
            if not pending and not over:
                over = True
                result.errback(failures[-1])
            return
        attempt = endpoint.connect(protocolFactory)
        pending.append(attempt)
        attempt.addCallbacks(connected, failed, (attempt,), None, (attempt,))
        if not over and attempt in pending:
            timer = reactor.callLater(ATTEMPT_DELAY, try_next)

    def connected(protocol: Any, attempt: Deferred[Any]) -> None:
        pending.remove(attempt)
        stop_trying()
        result.callback(protocol)

    def failed(reason: Failure, attempt: Deferred[Any]) -> None:
        pending.remove(attempt)
        if over:
            return  # cancelled: another attempt won, or the caller gave up
        failures.append(reason)
        try_next()

    try_next()
    return result


@implementer(IStreamClientEndpoint)
class NameEndpoint:
    """
    The endpoint to ``host:port`` when ``host`` is a name: it is resolved at
    every connection through the reactor's resolver (``getaddrinfo`` in a
    thread), and, with ``guard``, only the addresses it allows are kept
    (:class:`hq.guard.GuardedResolver`: a name that turns private later, DNS
    rebinding, is refused then). When every address is denied, ``connect``
    fails with :class:`hq.guard.DeniedAddress` naming them; when there is
    none, with Twisted's ``DNSLookupError``. The addresses are tried in
    turn (:func:`connect_in_turn`).

    This replaces Twisted's ``HostnameEndpoint``, which did more for each
    connection than the connection itself (the IDNA encoding of the name, a
    resolution receiver class defined anew with its interface declarations)
    and waited 0.3 s before the next address even when an attempt had
    failed at once.
    """

    def __init__(self, reactor: Any, host: str, port: int, guard: NetworkGuard | None) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._guard = guard

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        resolver: Any = self._reactor.nameResolver
        guarded = GuardedResolver(resolver, self._guard) if self._guard else None
        receiver = _Addresses()
        (guarded or resolver).resolveHostName(receiver, self._host, portNumber=self._port)

        def connect_to(addresses: list[IAddress]) -> Deferred[Any]:
            endpoints = address_endpoints(self._reactor, addresses, self._port)
            if not endpoints:
                if guarded is not None and guarded.denied:
                    raise DeniedAddress(self._host, guarded.denied)
                raise net_error.DNSLookupError(f"no results for hostname lookup: {self._host}")
            if len(endpoints) == 1:
                connected: Deferred[Any] = endpoints[0].connect(protocolFactory)
                return connected
            return connect_in_turn(self._reactor, endpoints, protocolFactory)

        return receiver.done.addCallback(connect_to)

    def __repr__(self) -> str:
        return f"<NameEndpoint {self._host}:{self._port}>"


def checked_host(scheme: bytes, netloc: bytes) -> str:
    """
    Return the host of a URL as text; raises ``ValueError`` for a host that
    is not ASCII and Twisted's ``SchemeNotSupported`` for a scheme other than
    ``http`` and ``https``.
    """
    try:
        host = netloc.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"the host {netloc!r} is not ASCII") from None
    if scheme not in (b"http", b"https"):
        raise SchemeNotSupported(f"Unsupported scheme: {scheme!r}")
    return host


@implementer(IAgentEndpointFactory)
class HostEndpoints:
    """
    The endpoints of an ``Agent`` (``Agent.usingEndpointFactory``): TCP to
    the URL's host (:func:`address_endpoint` or :class:`NameEndpoint`, with
    ``guard`` asked about each address), TLS checked by
    ``BrowserLikePolicyForHTTPS`` for ``https``, a 30 s connect timeout.
    """

    def __init__(self, reactor: Any, guard: NetworkGuard | None = None) -> None:
        self._reactor = reactor
        self._guard = guard
        self._tls = BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self.endpoint(uri.scheme, uri.host, uri.port)

    def endpoint(self, scheme: bytes, netloc: bytes, port: int) -> IStreamClientEndpoint:
        """
        Return the endpoint to ``netloc:port`` for ``scheme`` (see
        :func:`checked_host` for what it refuses).
        """
        host = checked_host(scheme, netloc)
        endpoint = address_endpoint(self._reactor, host, port, self._guard)
        if endpoint is None:
            endpoint = NameEndpoint(self._reactor, host, port, self._guard)
        if scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(netloc, port), endpoint)
        return endpoint
