"""The SSRF rule of DESIGN §6: only public addresses, checked once and then connected to."""

from __future__ import annotations

import asyncio
import http.cookiejar
import ipaddress
import socket
import ssl
import types
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import msgspec
from httpcore._utils import is_socket_readable

from menos import errors
from menos.pipeline import threads

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = types.MappingProxyType({"http": 80, "https": 443})
# A name the resolver has not answered for by then is unresolvable: a slow or silent DNS
# server must not hold a submission (or a connection) for the resolver's own retries. Counted
# from when a thread starts the lookup, not while it waits for one: threads busy with other
# names' slow lookups must not make a name that resolves at once unresolvable.
RESOLVE_TIMEOUT_S = 5.0

# IPv4 ranges refused whatever the running Python's ipaddress tables say.
_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", includes the unspecified address
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, includes cloud metadata 169.254.169.254
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    )
)

# IPv6 ranges refused outright; forms embedding an IPv4 address are judged by that address.
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # unspecified, loopback and IPv4-compatible (deprecated)
        "::ffff:0:0/96",  # IPv4-mapped
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001:2::/48",  # benchmarking
        "2001:10::/28",  # ORCHID (deprecated)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class Pinned(msgspec.Struct, frozen=True):
    """A URL whose host resolved only to allowed addresses, and the address to connect to."""

    url: str
    host: str
    address: str
    port: int


def is_public_address(ip: IPAddress) -> bool:
    """True when `ip` may be connected to under the SSRF rule (a public unicast address)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _is_public_v4(ip)
    if ip.ipv4_mapped is not None or any(ip in net for net in _REFUSED_V6):
        return False
    if ip.sixtofour is not None:
        # The IPv4 address inside decides. Python's own lists disagree on 2002::/16 (private
        # before 3.11.4 and 3.12.4, as Debian 12's 3.11.2 still says; not since).
        return _is_public_v4(ip.sixtofour)
    embedded: list[ipaddress.IPv4Address] = []
    if ip.teredo is not None:
        embedded.extend(ip.teredo)
    if ip in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if not all(_is_public_v4(inner) for inner in embedded):
        return False
    return not (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_site_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_private
        # Reserved: all but 2000::/3 and the ranges above, no public unicast there; NAT64's
        # well-known prefix lies in it, and its embedded address was checked above.
        or (ip.is_reserved and ip not in _NAT64)
    )


def _is_public_v4(ip: ipaddress.IPv4Address) -> bool:
    if any(ip in net for net in _REFUSED_V4):
        return False
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def resolve_checked(url: str, *, allow_private: bool, field: str = "url") -> Pinned:
    """Check `url` against the SSRF rule and return the address to connect to.

    Every address the host resolves to must be public unless `allow_private`; the first
    one is returned so the caller connects to exactly what was checked. Any refusal, an
    unparsable URL or an unresolvable host raises InvalidInput naming `field`.
    """
    host, port = _target(url, field)
    address = await checked_address(host, port, allow_private=allow_private, field=field)
    return Pinned(url=url, host=host, address=address, port=port)


def _target(url: str, field: str) -> tuple[str, int]:
    """The host and port of an http(s) URL without user-info; InvalidInput naming `field`."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise errors.InvalidInput(field, f"URL cannot be parsed: {exc}") from None
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS:
        raise errors.InvalidInput(field, "only http and https URLs are allowed")
    if parsed.userinfo:
        raise errors.InvalidInput(field, "URLs with user-info (user:password@) are not allowed")
    try:
        host = parsed.raw_host.decode("ascii").rstrip(".").lower()
    except UnicodeDecodeError:
        raise errors.InvalidInput(field, "URL host is not a valid host name") from None
    if not host:
        raise errors.InvalidInput(field, "URL has no host")
    port = parsed.port
    if port is not None and not 1 <= port <= 65535:  # 0 is no "default port"; over is no port
        raise errors.InvalidInput(field, "URL port must be a number from 1 to 65535")
    return host, port or _DEFAULT_PORTS[scheme]


async def checked_address(host: str, port: int, *, allow_private: bool, field: str) -> str:
    """The first address `host` resolves to, once every one has passed the SSRF rule."""
    return (await checked_addresses(host, port, allow_private=allow_private, field=field))[0]


async def checked_addresses(
    host: str, port: int, *, allow_private: bool, field: str, own_thread: bool = False
) -> list[str]:
    """The addresses to connect to for `host`, in resolver order, once every one of them has
    passed the SSRF rule (unless `allow_private`); InvalidInput naming `field`. `own_thread`:
    look the name up in a daemon thread of its own rather than the executor's bounded pool."""
    addresses = await _resolve(host, port, field, own_thread=own_thread)
    if not allow_private and not all(is_public_address(address) for address in addresses):
        # Not which address: the message reaches the submitter, who would learn the private
        # addresses of the names inside the network one request at a time.
        raise errors.InvalidInput(field, f"host {host} resolves to a non-public address")
    return [str(address) for address in addresses]


async def _resolve(host: str, port: int, field: str, *, own_thread: bool) -> list[IPAddress]:
    """IP literals as they are, names through the system resolver, in resolver order (a
    name's root dot dropped, as the check at submission drops it: resolvers differ on it)."""
    host = host.rstrip(".") or host
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    began: asyncio.Future[None] = loop.create_future()

    def start() -> None:
        if not began.done():
            began.set_result(None)

    def lookup() -> list[tuple[Any, ...]]:
        loop.call_soon_threadsafe(start)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)

    found = threads.in_daemon_thread(lookup) if own_thread else loop.run_in_executor(None, lookup)
    try:
        waits: list[asyncio.Future[Any]] = [found, began]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await found
    except TimeoutError:
        raise errors.Unresolvable(
            field, f"host {host} cannot be resolved: no answer within {RESOLVE_TIMEOUT_S:g} s"
        ) from None
    except (OSError, UnicodeError) as exc:
        raise errors.Unresolvable(field, f"host {host} cannot be resolved: {exc}") from None
    finally:
        found.cancel()  # the caller gave up while it waited for a thread: nothing to look up
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise errors.Unresolvable(field, f"host {host} resolves to no IP address")
    return addresses


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps no cookie, for every client that works for many owners.

    One client serves every owner's pages (callbacks, oEmbed lookups, LLM calls): a cookie
    kept from one owner's request would go out with another owner's to that site."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class _Stream(httpcore.AsyncNetworkStream):
    """A connection's stream whose readability check is one poll of its socket.

    Before each request httpcore asks every pooled connection whether its socket is readable
    (a server that closed it); anyio answers by building all of the socket's attributes,
    two getpeername calls among them, which was a fifth of the dispatcher's CPU."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable" and self._socket is not None:
            return is_socket_readable(self._socket)
        return self._inner.get_extra_info(info)


class _PinnedNetwork(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to checked addresses: each new connection resolves its host
    once, applies the SSRF rule and connects to exactly the address it checked."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first checked address of `host` that accepts, in resolver order (a
        host with an IPv6 address on a machine without an IPv6 route is reached over IPv4);
        InvalidInput("url", …) when refused, the last address's error when none accepts."""
        addresses = await checked_addresses(
            host, port, allow_private=self._allow_private, field="url", own_thread=True
        )
        options = list(socket_options or ())  # read once per attempt
        for address in addresses[:-1]:
            try:
                return await self._connect(address, port, timeout, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                continue
        return await self._connect(addresses[-1], port, timeout, local_address, options)

    async def _connect(
        self,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: list[httpcore.SOCKET_OPTION],
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: outbound requests go to checked TCP addresses only."""
        raise errors.InvalidInput("url", "only TCP connections are allowed")

    async def sleep(self, seconds: float) -> None:
        """The inner backend's sleep (connect retries)."""
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that applies the SSRF rule to every request and connection.

    Each request (so each redirect hop, when the caller follows redirects itself) must be an
    http(s) URL without user-info. Each new connection resolves its host once, checks every
    address, and connects to the checked one, so no second DNS lookup can change the
    destination. Connections are pooled per host name, as without pinning: a kept-alive
    connection serves only the name it was opened (and, for https, its certificate
    verified) for, never another name on the same address. A refusal raises
    `errors.InvalidInput("url", …)`; callers translate it.

    `verify` is httpx's; `network` is the backend under the check (a test's fake network).
    Each lookup runs in a daemon thread of its own: the clients using this transport have
    their requests in flight bounded (a worker's job slots, a dispatcher's delivery slots), and
    a name whose DNS never answers then holds only its own thread, not one of the executor's
    few that every other request's lookup waits for within its time limit.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        verify: ssl.SSLContext | bool = True,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        tls = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=tls)
        # httpx takes no network backend, so the pool it built is replaced by the same pool
        # (httpx's default limits) over the checking backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_PinnedNetwork(
                network if network is not None else httpcore.AnyIOBackend(),
                allow_private=allow_private,
            ),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Refuse a URL the rule never allows, then send through the checking pool."""
        _target(str(request.url), "url")
        return await super().handle_async_request(request)
