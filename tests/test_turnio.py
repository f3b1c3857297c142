"""
Tests for :mod:`hq.turnio`: a TCP connection's writes and read pauses settled
once per reactor turn, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from hq.turnio import _turns, settle_per_turn


class Peer(Protocol):
    """
    Keeps what it receives; ``made`` fires on connection, ``lost`` on its end.
    """

    def __init__(self, adopt: bool = False) -> None:
        self.adopt = adopt
        self.adopted: bool | None = None
        self.received = b""
        self.made: Deferred[Peer] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.waiting: tuple[int, Deferred[bytes]] | None = None

    def connectionMade(self) -> None:
        if self.adopt:
            self.adopted = settle_per_turn(self.transport)
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting is not None and len(self.received) >= self.waiting[0]:
            d = self.waiting[1]
            self.waiting = None
            d.callback(self.received)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)

    def receive(self, size: int) -> Deferred[bytes]:
        """
        Fire with all received once ``size`` bytes have arrived.
        """
        d: Deferred[bytes] = Deferred()
        if len(self.received) >= size:
            d.callback(self.received)
        else:
            self.waiting = (size, d)
        return d


@implementer(IHalfCloseableProtocol)
class HalfClosingPeer(Peer):
    """
    A :class:`Peer` whose connection survives the other side's half-close;
    ``ended`` fires when that side has closed its sending half.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ended: Deferred[None] = Deferred()

    def readConnectionLost(self) -> None:
        self.ended.callback(None)

    def writeConnectionLost(self) -> None:
        pass


class Counting:
    """
    Counts the reactor's ``addWriter``, ``addReader`` and ``removeReader``
    calls for one transport (the ``epoll_ctl`` calls this module saves).
    """

    def __init__(self, case: TestCase, transport: Any) -> None:
        self.calls: list[str] = []
        for name in ("addWriter", "addReader", "removeReader"):
            real = getattr(reactor, name)

            def counted(selectable: Any, real: Any = real, name: str = name) -> Any:
                if selectable is transport:
                    self.calls.append(name)
                return real(selectable)

            case.patch(reactor, name, counted)


class SettlePerTurnTests(TestCase):
    """
    :func:`settle_per_turn` on real TCP connections.
    """

    #: Each takes well under a second; one that hangs fails soon.
    timeout = 30

    @inlineCallbacks
    def connect(self, wrap: bool = False, client: Peer | None = None) -> Any:
        """
        Fire with ``(server, client)``: the server's transport adopted.
        """
        server = Peer(adopt=True)
        factory: Any = Factory.forProtocol(lambda: server)
        if wrap:
            factory = WrappingFactory(factory)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = client or Peer()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: client)
        )
        yield server.made
        self.addCleanup(self.close, server, client)
        return server, client

    @inlineCallbacks
    def still_heard(self, server: Peer, client: Peer) -> Any:
        """
        Check that ``server``, its sending side closed, is still connected and
        reads what ``client`` sends.
        """
        client.transport.write(b"still heard")
        received = yield server.receive(len(b"still heard"))
        self.assertEqual(received, b"still heard")
        self.assertTrue(server.transport.connected)

    @inlineCallbacks
    def close(self, *peers: Peer) -> Any:
        for peer in peers:
            if peer.transport is not None and getattr(peer.transport, "connected", False):
                peer.transport.loseConnection()
        for peer in peers:
            yield peer.lost

    @inlineCallbacks
    def test_writes_of_a_turn_go_in_one_send_without_watching(self) -> Any:
        """
        Writes of one turn arrive in order, and the reactor never watches
        the socket for writing (Twisted alone would, for every turn's writes).
        """
        server, client = yield self.connect()
        self.assertTrue(server.adopted)
        counting = Counting(self, server.transport)
        sends: list[int] = []
        real_send = server.transport.socket.send
        self.patch(server.transport, "socket", _Socket(server.transport.socket, real_send, sends))
        server.transport.write(b"one ")
        server.transport.writeSequence([b"two ", b"three"])
        self.assertEqual(client.received, b"")
        received = yield client.receive(len(b"one two three"))
        self.assertEqual(received, b"one two three")
        self.assertEqual(sends, [len(b"one two three")])
        self.assertEqual(counting.calls, [])

    @inlineCallbacks
    def test_what_the_kernel_does_not_take_is_sent_when_it_can(self) -> Any:
        """
        A write larger than the socket's buffers: the reactor watches the
        socket for the rest, and every byte arrives in order.
        """
        server, client = yield self.connect()
        counting = Counting(self, server.transport)
        data = bytes(range(256)) * (32 * 1024)  # 8 MiB
        server.transport.write(data)
        received = yield client.receive(len(data))
        self.assertEqual(received, data)
        self.assertIn("addWriter", counting.calls)

    @inlineCallbacks
    def test_lose_connection_after_writing_sends_then_closes(self) -> Any:
        """
        ``loseConnection`` right after writes: the peer gets them, then the end.
        """
        server, client = yield self.connect()
        server.transport.write(b"last words")
        server.transport.loseConnection()
        yield client.lost
        self.assertEqual(client.received, b"last words")

    @inlineCallbacks
    def test_lose_connection_with_nothing_to_send_closes(self) -> Any:
        """
        ``loseConnection`` with nothing written closes the connection.
        """
        server, client = yield self.connect()
        server.transport.loseConnection()
        yield client.lost
        self.assertEqual(client.received, b"")

    @inlineCallbacks
    def test_half_close_after_writing(self) -> Any:
        """
        ``loseWriteConnection`` after a write: the peer gets the data and the
        end of the stream, and may still send to the half-closed side.
        """
        server, client = yield self.connect(client=HalfClosingPeer())
        server.transport.write(b"answer")
        server.transport.loseWriteConnection()
        yield client.ended
        self.assertEqual(client.received, b"answer")
        yield self.still_heard(server, client)

    @inlineCallbacks
    def test_pause_and_resume_in_one_turn_changes_nothing(self) -> Any:
        """
        Reading paused and resumed within one turn: the reactor's watch is
        not touched, and data keeps arriving.
        """
        server, client = yield self.connect()
        counting = Counting(self, server.transport)
        server.transport.pauseProducing()
        server.transport.resumeProducing()
        client.transport.write(b"ping")
        received = yield server.receive(4)
        self.assertEqual(received, b"ping")
        self.assertEqual(counting.calls, [])

    @inlineCallbacks
    def test_a_pause_that_holds_stops_reading_until_resumed(self) -> Any:
        """
        A pause still in force at the end of the turn stops the reactor
        watching the socket; nothing is read until the resume.
        """
        server, client = yield self.connect()
        counting = Counting(self, server.transport)
        server.transport.pauseProducing()
        client.transport.write(b"held")
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(server.received, b"")
        self.assertEqual(counting.calls, ["removeReader"])
        server.transport.resumeProducing()
        received = yield server.receive(4)
        self.assertEqual(received, b"held")
        self.assertEqual(counting.calls, ["removeReader", "addReader"])

    @inlineCallbacks
    def test_a_read_asked_for_while_paused_reads_nothing(self) -> Any:
        """
        The reactor polled before a pause of this turn and may still ask the
        connection to read: it reads nothing (the bytes stay in the kernel).
        """
        server, client = yield self.connect()
        server.transport.pauseProducing()
        client.transport.write(b"held")
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(server.received, b"")
        server.transport.resumeProducing()
        server.transport.pauseProducing()
        self.assertIsNone(server.transport.doRead())
        self.assertEqual(server.received, b"")
        server.transport.resumeProducing()
        received = yield server.receive(4)
        self.assertEqual(received, b"held")

    @inlineCallbacks
    def test_connection_lost_with_writes_queued(self) -> Any:
        """
        A connection lost before the end of the turn that queued its writes
        is passed over, and its transport has its own methods back.
        """
        server, client = yield self.connect()
        server.transport.write(b"never sent")
        transport = server.transport
        transport.abortConnection()
        yield server.lost
        yield client.lost
        yield deferLater(reactor, 0, lambda: None)
        # Twisted's own methods again: nothing of this module keeps it.
        self.assertEqual([name for name in vars(transport) if name == "doRead"], [])

    @inlineCallbacks
    def test_a_failing_send_ends_its_connection_only(self) -> Any:
        """
        A send that raises, with another connection's writes in the same
        turn: the error is logged and its connection ends (as the reactor
        ends one whose doWrite raises), and the other's data still goes.
        """
        first, first_client = yield self.connect()
        second, second_client = yield self.connect()

        def fails() -> Any:
            raise ZeroDivisionError("a send that fails")

        first.transport.doWrite = fails
        first.transport.write(b"first")
        second.transport.write(b"second")
        received = yield second_client.receive(len(b"second"))
        self.assertEqual(received, b"second")
        yield first.lost
        yield first_client.lost
        self.assertEqual(first_client.received, b"")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_a_half_closed_connection_survives_a_pause(self) -> Any:
        """
        Reading paused and resumed after the sending side was closed: the
        connection stays up, and what the peer sends is still read.
        """
        server, client = yield self.connect(client=HalfClosingPeer())
        server.transport.write(b"answer")
        server.transport.loseWriteConnection()
        yield client.ended
        server.transport.pauseProducing()
        yield deferLater(reactor, 0.02, lambda: None)
        server.transport.resumeProducing()
        yield deferLater(reactor, 0.02, lambda: None)
        yield self.still_heard(server, client)

    @inlineCallbacks
    def test_write_and_half_close_from_a_timed_call(self) -> Any:
        """
        A write and a half-close made from a timed call (the reactor polls,
        and half-closes, before the turn's settling runs): the data goes,
        and the connection stays up for what the peer still sends.
        """
        server, client = yield self.connect(client=HalfClosingPeer())

        def answer() -> None:
            server.transport.write(b"late answer")
            server.transport.loseWriteConnection()

        yield deferLater(reactor, 0.01, answer)
        yield client.ended
        self.assertEqual(client.received, b"late answer")
        yield self.still_heard(server, client)

    @inlineCallbacks
    def test_a_cancelled_settling_is_replaced(self) -> Any:
        """
        The end-of-turn call cancelled from outside (as trial's clean-up
        cancels what a test leaves): the next write schedules another, and
        what waited goes with it.
        """
        first, first_client = yield self.connect()
        second, second_client = yield self.connect()
        first.transport.write(b"waited")
        turn = _turns[reactor]
        assert turn._call is not None
        turn._call.cancel()
        second.transport.write(b"next")
        received = yield second_client.receive(len(b"next"))
        self.assertEqual(received, b"next")
        received = yield first_client.receive(len(b"waited"))
        self.assertEqual(received, b"waited")

    @inlineCallbacks
    def test_an_empty_write_resumes_a_pull_producer(self) -> Any:
        """
        A pull producer that writes nothing (``writeSequence([b""])``) is
        asked for more once that is "sent", as Twisted's own path does.
        """
        server, client = yield self.connect()
        producer = _PullProducer(server.transport, [[b""], [b"done"]])
        server.transport.registerProducer(producer, False)
        received = yield client.receive(len(b"done"))
        self.assertEqual(received, b"done")
        self.assertEqual(producer.resumed, 3)

    @inlineCallbacks
    def test_under_a_wrapping_protocol(self) -> Any:
        """
        A protocol under a wrapper (as the worker connections' byte budget,
        or TLS) has the TCP connection beneath adopted, once.
        """
        server, client = yield self.connect(wrap=True)
        self.assertTrue(server.adopted)
        self.assertIsInstance(server.transport, ProtocolWrapper)
        tcp_transport = server.transport.transport
        self.assertIn("startWriting", vars(tcp_transport))
        hook = tcp_transport.startWriting
        self.assertTrue(settle_per_turn(server.transport))
        self.assertIs(tcp_transport.startWriting, hook)
        server.transport.write(b"wrapped")
        received = yield client.receive(len(b"wrapped"))
        self.assertEqual(received, b"wrapped")

    def test_other_transports_are_left_alone(self) -> None:
        """
        A transport that is not TCP (a test's ``StringTransport``) is not adopted.
        """
        transport = StringTransport()
        self.assertFalse(settle_per_turn(transport))
        self.assertNotIn("startWriting", vars(transport))


@implementer(IPullProducer)
class _PullProducer:
    """
    Writes one sequence of ``chunks`` each time it is asked for more, then
    unregisters; counts the asks.
    """

    def __init__(self, transport: Any, chunks: list[list[bytes]]) -> None:
        self._transport = transport
        self._chunks = chunks
        self.resumed = 0

    def resumeProducing(self) -> None:
        self.resumed += 1
        if self._chunks:
            self._transport.writeSequence(self._chunks.pop(0))
        else:
            self._transport.unregisterProducer()

    def stopProducing(self) -> None:
        pass


class _Socket:
    """
    A socket whose ``send`` calls are noted (their sizes).
    """

    def __init__(self, real: Any, send: Any, sends: list[int]) -> None:
        self._real = real
        self._send = send
        self._sends = sends

    def send(self, data: Any) -> int:
        sent: int = self._send(data)
        self._sends.append(sent)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
