"""
The outbound guard: which addresses HQ may deliver to (config ``deny_networks``
and ``allow_networks``, SPEC §12).

An address in a denied network is refused unless it is also in an allowed one.
The check is made on the address actually connected to:
:class:`hq.connect.NameEndpoint` resolves the worker's host name, at every new
connection, through a resolver that drops denied addresses
(:class:`GuardedResolver`) before it connects to one, so a name that
resolves to a public address at push time and to a private one later (DNS
rebinding) is still refused; :func:`hq.connect.address_endpoint` checks an
address in the URL before it connects. A URL whose host is a literal denied
address is refused at push already (:meth:`NetworkGuard.url_problem`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs
from twisted.internet import error as net_error
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from zope.interface import implementer

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DeniedAddress(net_error.ConnectError):
    """
    Every address the worker's host resolved to is in a denied network.

    ``str()`` names the addresses; :func:`hq.worker.describe_error` shows it as
    ``could not connect to HOST: <this text>``.
    """

    def __init__(self, host: str, addresses: Sequence[str]) -> None:
        shown = ", ".join(addresses[:4]) + (", ..." if len(addresses) > 4 else "")
        what = "the address" if len(addresses) == 1 else "the addresses"
        verb = "is" if len(addresses) == 1 else "are"
        super().__init__(string=f"{what} {shown} of {host} {verb} denied by 'deny_networks'")
        self.host = host
        self.addresses = tuple(addresses)

    def __str__(self) -> str:
        return str(self.args[0])


def _normalised(address: IPAddress) -> IPAddress:
    # ::ffff:169.254.169.254 reaches the IPv4 address: judge it as that.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Connecting to an unspecified address (0.0.0.0/8, ::) reaches this host:
    # judge it as loopback, so a deny list with loopback covers it.
    if isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK:
        return _LOOPBACK_V4
    if address == _UNSPECIFIED_V6:
        return _LOOPBACK_V6
    return address


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LOOPBACK_V4 = ipaddress.ip_address("127.0.0.1")
_UNSPECIFIED_V6 = ipaddress.ip_address("::")
_LOOPBACK_V6 = ipaddress.ip_address("::1")


def literal_address(host: str) -> IPAddress | None:
    """
    Return the address a URL's host names literally, or ``None`` for a name:
    also the IPv4 forms that the resolver takes (``2130706433``, ``0177.0.0.1``,
    ``0x7f.1``, ``127.1``), so that a push cannot hide a denied address in them.
    """
    host = host.strip("[]").partition("%")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@attrs.frozen
class NetworkGuard:
    """
    The denied and allowed networks; an address in ``allow`` is allowed even
    inside a network in ``deny``.
    """

    deny: tuple[IPNetwork, ...] = ()
    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, deny: Sequence[str], allow: Sequence[str]) -> NetworkGuard:
        """
        Return the guard for the config's CIDR lists (already checked).
        """
        return cls(
            tuple(ipaddress.ip_network(n, strict=False) for n in deny),
            tuple(ipaddress.ip_network(n, strict=False) for n in allow),
        )

    def __bool__(self) -> bool:
        return bool(self.deny)

    def denies(self, host: str) -> bool:
        """
        Return whether the literal address ``host`` is denied (a name never is).
        """
        literal = literal_address(host)
        if literal is None:
            return False
        address = _normalised(literal)
        if not any(address in network for network in self.deny):
            return False
        return not any(address in network for network in self.allow)

    def url_problem(self, url: str) -> str | None:
        """
        Return why ``url`` is refused at push (its host is a denied literal
        address), or ``None``.
        """
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            return None
        if host and self.denies(host):
            return (
                f"'url' names the address {host}, which is denied by 'deny_networks' "
                "(see docs/security.md)"
            )
        return None


@implementer(IResolutionReceiver)
class _Filter:
    def __init__(self, receiver: IResolutionReceiver, guard: NetworkGuard, denied: list[str]):
        self._receiver = receiver
        self._guard = guard
        self._denied = denied

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        self._receiver.resolutionBegan(resolutionInProgress)

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and self._guard.denies(host):
            self._denied.append(host)
            return
        self._receiver.addressResolved(address)

    def resolutionComplete(self) -> None:
        self._receiver.resolutionComplete()


@implementer(IHostnameResolver)
class GuardedResolver:
    """
    A name resolver that passes on only addresses ``guard`` allows, and
    records the others in ``denied``.
    """

    def __init__(self, resolver: IHostnameResolver, guard: NetworkGuard) -> None:
        self._resolver = resolver
        self._guard = guard
        self.denied: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        return self._resolver.resolveHostName(
            _Filter(resolutionReceiver, self._guard, self.denied),
            hostName,
            portNumber,
            addressTypes,
            transportSemantics,
        )
