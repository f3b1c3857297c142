"""
A TCP connection's writes and read pauses settled once per turn of the reactor.

Twisted's TCP transport never sends at ``write``: it asks the reactor to
watch the socket for writing (an ``epoll_ctl``), sends from the reactor's
next poll, and stops watching (another ``epoll_ctl``). Its HTTP client
pauses reading when a response's headers arrive and resumes it as soon as the
body's reader is attached, in the same turn: two more ``epoll_ctl``. A job
delivered makes two such writes (the push's answer, the POST to the worker)
and one such pause: six system calls, each with the reactor's Python around
it, that carry nothing.

:func:`settle_per_turn` changes that for one connection: its writes of a
turn are sent with one ``send`` at the end of the turn (the reactor runs it
before it polls again), and the socket is watched for writing only when the
kernel did not take everything; a pause of reading is applied at the end of
the turn only if it still holds then. Until then the connection reads
nothing, as a paused one would.

It reaches into ``twisted.internet.abstract.FileDescriptor``'s buffers and
applies only to ``twisted.internet.tcp.Connection`` transports that have
them (under wrapping protocols such as TLS, the TCP connection beneath);
anything unusual (a connection closing, half-closed, lost) goes back to
Twisted's own path at once.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The reactors' turn settlers.
_turns: weakref.WeakKeyDictionary[Any, _Turn] = weakref.WeakKeyDictionary()

#: How many wrapping protocols :func:`settle_per_turn` looks under.
_DEPTH = 4

#: The transport's methods :func:`settle_per_turn` replaces (on the instance).
_HOOKS = ("startWriting", "startReading", "stopReading", "doRead", "connectionLost")

#: The attributes of ``FileDescriptor`` this relies on.
_NEEDED = (
    "_tempDataBuffer",
    "_tempDataLen",
    "dataBuffer",
    "offset",
    "_writeDisconnecting",
    "_writeDisconnected",
)


def settle_per_turn(transport: Any) -> bool:
    """
    Make ``transport`` send its writes and apply its read pauses once per
    reactor turn; return whether it does (only a plain, connected TCP
    transport of a reactor that can ``callLater``).
    """
    # Under wrapping protocols (a byte budget, TLS), the TCP transport.
    for _ in range(_DEPTH):
        if isinstance(transport, tcp.Connection):
            break
        transport = getattr(transport, "transport", None)
    if not isinstance(transport, tcp.Connection) or not transport.connected:
        return False
    if "startWriting" in vars(transport):
        return True  # Adopted already (by the protocol it wraps).
    if not all(hasattr(transport, name) for name in _NEEDED):
        return False
    reactor = transport.reactor
    if not hasattr(reactor, "callLater"):
        return False
    turn = _turns.get(reactor)
    if turn is None:
        turn = _turns[reactor] = _Turn(reactor)
    turn.adopt(transport)
    return True


class _Settled:
    """
    What :class:`_Turn` keeps of one transport: its own (Twisted's) methods,
    whether it is to read, whether the reactor watches it for reading, and
    whether it waits for the end of the turn.
    """

    __slots__ = (
        "queued",
        "reading",
        "start_reading",
        "start_writing",
        "stop_reading",
        "transport",
        "watched",
        "writing",
    )

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.start_writing = transport.startWriting
        self.start_reading = transport.startReading
        self.stop_reading = transport.stopReading
        #: Reading, as the protocol last asked (``startReading``/``stopReading``).
        self.reading = True
        #: Reading, as the reactor watches the socket.
        self.watched = True
        #: Writes asked for (``startWriting``) since the last settle.
        self.writing = False
        self.queued = False

    def watch(self, reading: bool) -> None:
        """
        Have the reactor watch the socket for reading, or not, now.
        """
        self.watched = reading
        if reading:
            self.start_reading()
        else:
            self.stop_reading()


class _Turn:
    """
    The transports of one reactor with writes or a read change to settle at
    the end of this turn.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        # Weakly: this is the value of the reactor's entry in ``_turns``.
        self._reactor = weakref.ref(reactor)
        self._queued: list[_Settled] = []
        self._call: Any = None

    def adopt(self, transport: Any) -> None:
        """
        Route ``transport``'s ``startWriting``, ``startReading``,
        ``stopReading`` and ``doRead`` through this turn (from
        ``connectionMade``: it reads), until its ``connectionLost``.
        """
        state = _Settled(transport)
        real_do_read = transport.doRead

        def start_writing() -> None:
            if transport.disconnecting or transport._writeDisconnecting:
                # Closing: Twisted's path writes what is left, then closes.
                state.start_writing()
            else:
                state.writing = True
                self._queue(state)

        def set_reading(reading: bool) -> None:
            state.reading = reading
            if transport.connected and not transport.disconnecting:
                self._queue(state)
            else:
                state.watch(reading)

        def do_read() -> Any:
            if not state.reading:
                # Paused in this turn, after the reactor's poll: read nothing
                # (the kernel keeps the bytes) and stop watching now.
                state.watch(False)
                return None
            return real_do_read()

        real_connection_lost = transport.connectionLost

        def connection_lost(reason: Any) -> Any:
            # Twisted's own methods from now on, and no cycle left through
            # these functions to keep the transport in memory.
            for name in _HOOKS:
                vars(transport).pop(name, None)
            return real_connection_lost(reason)

        transport.startWriting = start_writing
        transport.startReading = functools.partial(set_reading, True)
        transport.stopReading = functools.partial(set_reading, False)
        transport.doRead = do_read
        transport.connectionLost = connection_lost

    def _queue(self, state: _Settled) -> None:
        if not state.queued:
            state.queued = True
            self._queued.append(state)
            reactor = self._reactor()
            # (A call cancelled from outside, as trial's clean-up does, is
            # replaced.)
            if (self._call is None or not self._call.active()) and reactor is not None:
                self._call = reactor.callLater(0, self._settle)

    def _settle(self) -> None:
        """
        At the end of the turn: send what each queued transport has to send,
        watch for writing those the kernel did not take whole, and apply the
        read changes that still hold.
        """
        self._call = None
        queued, self._queued = self._queued, []
        for state in queued:
            state.queued = False
            if not state.transport.connected:
                continue  # Lost meanwhile: Twisted has stopped watching it.
            try:
                why = self._settle_one(state)
            except Exception as e:
                # As the reactor does with a doWrite that raises: said, and
                # the connection ends with it; the others still go.
                self.log.failure("Sending on {transport} failed", transport=state.transport)
                why = e
            if why is not None and state.transport.connected:
                self._lost(state.transport, why)

    def _lost(self, transport: Any, why: BaseException) -> None:
        """
        End ``transport``'s connection because a send failed with ``why``,
        as the reactor ends one whose doWrite fails.
        """
        reactor = self._reactor()
        disconnect = getattr(reactor, "_disconnectSelectable", None)
        if disconnect is not None:
            disconnect(transport, why, False)
        else:
            transport.connectionLost(Failure(why))

    @staticmethod
    def _settle_one(state: _Settled) -> Any:
        """
        Settle one transport: its read change, then its writes. Return
        ``None``, or why its connection failed (as a doWrite does).
        """
        transport = state.transport
        if state.reading is not state.watched:
            state.watch(state.reading)
        writing, state.writing = state.writing, False
        if transport._writeDisconnected:
            return None  # Half-closed: nothing more goes out.
        if transport.disconnecting or transport._writeDisconnecting:
            # Closing (``loseConnection`` asks to write before it marks
            # the transport so): Twisted's path writes what is left and closes.
            state.start_writing()
            return None
        if not writing:
            return None  # Only a read change.
        # Twisted's own send: whatever fits, the rest kept in its buffer,
        # the producer resumed when all is sent.
        why = transport.doWrite()
        if why is None and (transport._tempDataLen or transport.offset < len(transport.dataBuffer)):
            # Not all taken: the reactor watches it and its doWrite sends the rest.
            state.start_writing()
        return why
