"""
Tests for hq.guard: the outbound guard on resolved addresses (at connect time),
on literal hosts at push, and in real deliveries over loopback.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site
from zope.interface import implementer

from hq.api import HQApi
from hq.config import Config, ConfigError, config_from_dict
from hq.connect import NameEndpoint
from hq.guard import DeniedAddress, NetworkGuard
from hq.ids import IdGenerator
from hq.model import Job
from hq.store.memory import MemoryStore
from hq.testing import FakeWorker, RecordingDispatch, Reply
from hq.worker import WorkerClient, WorkerConnectionPool, make_http_client

GUARD = NetworkGuard.from_config(
    ["169.254.0.0/16", "fd00:ec2::254/128", "127.0.0.0/8", "::1/128", "10.0.0.0/8"],
    ["127.0.0.1/32"],
)


class NetworkGuardTests(SynchronousTestCase):
    """
    Which addresses are denied.
    """

    def test_denied_unless_allowed(self) -> None:
        """Inside a denied network is denied, unless also inside an allowed one."""
        for host in ("169.254.169.254", "fd00:ec2::254", "127.0.0.2", "::1", "10.1.2.3"):
            self.assertTrue(GUARD.denies(host), host)
        for host in ("127.0.0.1", "93.184.216.34", "2001:db8::1", "fd00:ec2::253"):
            self.assertFalse(GUARD.denies(host), host)

    def test_ipv4_mapped_ipv6_is_judged_as_ipv4(self) -> None:
        """::ffff:169.254.169.254 reaches the metadata service: denied."""
        self.assertTrue(GUARD.denies("::ffff:169.254.169.254"))
        self.assertTrue(GUARD.denies("[::ffff:a9fe:a9fe]"))

    def test_unspecified_addresses_are_judged_as_loopback(self) -> None:
        """0.0.0.0/8 and :: reach this host: denied when loopback is."""
        loopback = NetworkGuard.from_config(["127.0.0.0/8", "::1/128"], [])
        for host in ("0.0.0.0", "0.1.2.3", "[::]", "::ffff:0.0.0.0"):
            self.assertTrue(loopback.denies(host), host)
        self.assertFalse(NetworkGuard.from_config(["10.0.0.0/8"], []).denies("0.0.0.0"))

    def test_every_ipv4_literal_form_is_recognised(self) -> None:
        """Decimal, octal, hex and short IPv4 forms name 127.0.0.1 or 169.254.169.254 too."""
        loopback = NetworkGuard.from_config(["127.0.0.0/8", "169.254.0.0/16"], [])
        for host in ("2130706433", "0177.0.0.1", "0x7f000001", "127.1", "0251.0376.0251.0376"):
            self.assertTrue(loopback.denies(host), host)
            self.assertIsNotNone(loopback.url_problem(f"http://{host}:8000/"), host)
        for host in ("8.8.8.8.8", "1e3", "example.com", "0x", "93.184.216.34"):
            self.assertFalse(loopback.denies(host), host)

    def test_names_are_judged_when_resolved_not_here(self) -> None:
        """A host name is never denied by itself (its addresses are, when connecting)."""
        self.assertFalse(GUARD.denies("metadata.google.internal"))
        self.assertIsNone(GUARD.url_problem("http://localhost:8080/"))

    def test_url_problem_names_the_address(self) -> None:
        """A URL with a literal denied host is refused, naming the address."""
        self.assertEqual(
            GUARD.url_problem("http://169.254.169.254/latest/meta-data/"),
            "'url' names the address 169.254.169.254, which is denied by 'deny_networks' "
            "(see docs/security.md)",
        )
        self.assertIn("::1", GUARD.url_problem("http://[::1]:8080/") or "")
        self.assertIsNone(GUARD.url_problem("http://127.0.0.1:8080/"))

    def test_empty_guard_denies_nothing(self) -> None:
        """No deny_networks: everything is allowed, and the guard is false."""
        guard = NetworkGuard.from_config([], ["10.0.0.0/8"])
        self.assertFalse(guard)
        self.assertFalse(guard.denies("169.254.169.254"))

    def test_config_checks_the_networks_by_key(self) -> None:
        """A bad CIDR stops start-up naming the key."""
        with self.assertRaises(ConfigError) as caught:
            config_from_dict({"deny_networks": ["169.254.0.0/16", "metadata"]})
        self.assertIn("'deny_networks' must hold IP addresses or networks", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            config_from_dict({"allow_networks": "10.0.0.0/8"})
        self.assertIn("'allow_networks' must be an array of strings", str(caught.exception))
        config = config_from_dict({"deny_networks": ["::1"], "allow_networks": []})
        self.assertEqual((config.deny_networks, config.allow_networks), (("::1",), ()))


@implementer(IHostnameResolver)
class FakeResolver:
    """
    Resolves every name to ``addresses`` at once; counts the lookups.
    """

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.lookups = 0

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.lookups += 1
        resolutionReceiver.resolutionBegan(None)  # type: ignore[arg-type]
        for address in self.addresses:
            kind = IPv6Address if ":" in address else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return None


class GuardedNameEndpointTests(SynchronousTestCase):
    """
    The check is on the addresses a name resolves to at connect time
    (hq.connect.NameEndpoint with a guard).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = FakeResolver([])
        self.reactor.nameResolver = self.resolver  # type: ignore[attr-defined]

    def connect(self, host: str = "worker.example") -> Any:
        endpoint = NameEndpoint(self.reactor, host, 8080, GUARD)
        return endpoint.connect(Factory.forProtocol(Protocol))

    def test_only_allowed_addresses_are_connected_to(self) -> None:
        """Of a public and a private address, only the public one is tried."""
        self.resolver.addresses = ["10.0.0.5", "93.184.216.34"]
        d = self.connect()
        self.assertNoResult(d)
        self.assertEqual(
            [(host, port) for host, port, *_ in self.reactor.tcpClients],
            [("93.184.216.34", 8080)],
        )

    def test_all_denied_fails_naming_the_addresses(self) -> None:
        """Every address denied: DeniedAddress naming them; nothing is connected."""
        self.resolver.addresses = ["169.254.169.254", "fd00:ec2::254"]
        failure = self.failureResultOf(self.connect("meta.example"), DeniedAddress)
        self.assertEqual(
            str(failure.value),
            "the addresses 169.254.169.254, fd00:ec2::254 of meta.example are denied "
            "by 'deny_networks'",
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_dns_rebinding_is_checked_on_each_connect(self) -> None:
        """A name that turns private later is refused then: each connect resolves anew."""
        endpoint = NameEndpoint(self.reactor, "rebind.example", 80, GUARD)
        self.resolver.addresses = ["93.184.216.34"]
        self.assertNoResult(endpoint.connect(Factory.forProtocol(Protocol)))
        self.resolver.addresses = ["127.0.0.2"]
        d = endpoint.connect(Factory.forProtocol(Protocol))
        self.failureResultOf(d, DeniedAddress)
        self.assertEqual(self.resolver.lookups, 2)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_a_name_that_does_not_resolve_stays_a_dns_error(self) -> None:
        """No address at all is the usual DNS error, not a denial."""
        from twisted.internet.error import DNSLookupError

        self.failureResultOf(self.connect(), DNSLookupError)


class PushGuardTests(SynchronousTestCase):
    """
    A push to a literal denied address is 422; other URLs are accepted.
    """

    def test_push_to_denied_literal_is_422(self) -> None:
        """The metadata address is refused at push, naming it; nothing is stored."""
        clock = Clock()
        dispatch = RecordingDispatch()
        api = HQApi(
            store=MemoryStore(),
            dispatch=dispatch,
            ids=IdGenerator(0, clock),
            clock=clock,
            config=Config(),
            guard=GUARD,
        )
        client = StubTreq(api.resource())

        def push(url: str) -> tuple[int, Any]:
            d = client.post("http://hq.test/job", json={"url": url})
            client.flush()
            response = self.successResultOf(d)
            body = self.successResultOf(response.content())
            return response.code, json.loads(body)

        status, body = push("http://169.254.169.254/latest/meta-data/")
        self.assertEqual(
            (status, body["error"]),
            (
                422,
                "'url' names the address 169.254.169.254, which is denied by "
                "'deny_networks' (see docs/security.md)",
            ),
        )
        self.assertEqual(dispatch.enqueued, [])
        self.assertEqual(push("http://worker.example/")[0], 200)
        self.assertEqual(push("http://127.0.0.1:9/")[0], 200)


class RealDeliveryTests(TestCase):
    """
    Over loopback: a denied worker fails the attempt with err naming the address;
    an allowed one is reached; a redirect to a denied address is refused.
    """

    def setUp(self) -> None:
        self.worker = FakeWorker()
        self.port = reactor.listenTCP(0, Site(self.worker), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.pool = WorkerConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)

    async def deliver(self, url: str, guard: NetworkGuard) -> Any:
        http = make_http_client(reactor, self.pool, guard=guard)
        client = WorkerClient(http, reactor, "HQ/test", 1024)
        return await client.post(Job(id=1, url=url, timeout=10))

    async def test_denied_name_fails_naming_the_address(self) -> None:
        """localhost under a loopback deny: err names the address, the worker sees nothing."""
        guard = NetworkGuard.from_config(["127.0.0.0/8", "::1/128"], [])
        exchange = await self.deliver(f"http://localhost:{self.port.getHost().port}/", guard)
        self.assertFalse(exchange.success)
        self.assertRegex(
            exchange.reason(),
            r"^could not connect to localhost: the address(es)? .*127\.0\.0\.1.* of localhost "
            r"(is|are) denied by 'deny_networks'$",
        )
        self.assertEqual(self.worker.requests, [])

    async def test_allowed_address_is_delivered(self) -> None:
        """127.0.0.1 in allow_networks is reached although 127.0.0.0/8 is denied."""
        exchange = await self.deliver(f"http://127.0.0.1:{self.port.getHost().port}/", GUARD)
        self.assertTrue(exchange.success, exchange.reason())
        self.assertEqual(len(self.worker.requests), 1)

    async def test_redirect_to_denied_address_is_refused(self) -> None:
        """A worker redirecting to a denied address does not get HQ there."""
        port = self.port.getHost().port
        self.worker.route("/", Reply(307, b"", {"Location": f"http://127.0.0.2:{port}/inner"}))
        exchange = await self.deliver(f"http://127.0.0.1:{port}/", GUARD)
        self.assertFalse(exchange.success)
        self.assertIn("the address 127.0.0.2 of 127.0.0.2 is denied", exchange.reason())
        self.assertEqual([r.path for r in self.worker.requests], ["/"])
