"""The SSRF rule of DESIGN §6: only public addresses, and the connection goes where was checked."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import pathlib
import socket
import ssl
from typing import Any, NamedTuple

import httpcore
import httpx
import pytest
import trustme

from menos import errors
from menos.pipeline import ssrf
from tests.support.http_network import HandlerNetwork
from tests.support.silent_dns import SilentDNS

REFUSED = [
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.8.9.10",
    "169.254.169.254",
    "169.254.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.0.0.8",
    "192.0.2.10",
    "192.168.0.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::127.0.0.1",
    "::8.8.8.8",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:8.8.8.8",
    "fc00::1",
    "fd12:3456:789a::1",
    "fe80::1",
    "fe80::1%eth0",
    "febf::1",
    "fec0::1",
    "ff02::1",
    "ff05::1:3",
    "2001:db8::1",
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    "2002:c0a8:101::1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "100::1",
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
    "::ffff:0:808:808",  # and 8.8.8.8: reserved either way
    "4000::1",
    "1::",
    "5f00::1",
    "6000::1",
    "e000::1",
]

PUBLIC = [
    "1.1.1.1",
    "8.8.8.8",
    "93.184.215.14",
    "11.0.0.1",
    "100.63.255.255",
    "100.128.0.1",
    "172.32.0.1",
    "192.169.0.1",
    "223.255.255.254",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "2002:808:808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local, CGNAT, multicast, reserved and embedded forms are refused."""
    assert not ssrf.is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    """Ordinary internet addresses (and 6to4/NAT64 forms of them) may be fetched."""
    assert ssrf.is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8000/admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://localhost/",
        "http://LOCALHOST./",
    ],
)
async def test_private_targets_refused_by_resolve_checked(url: str) -> None:
    """A URL pointing at this machine, the LAN or cloud metadata is refused, naming the field."""
    with pytest.raises(errors.InvalidInput) as caught:
        await ssrf.resolve_checked(url, allow_private=False)
    assert caught.value.field == "url"
    assert "non-public" in caught.value.message


async def test_public_ip_literal_is_pinned_without_dns() -> None:
    """A public IP literal is accepted and connected to as is, on the scheme's default port."""
    pinned = await ssrf.resolve_checked("https://8.8.8.8/dns-query", allow_private=False)
    assert pinned == ssrf.Pinned(
        url="https://8.8.8.8/dns-query", host="8.8.8.8", address="8.8.8.8", port=443
    )


async def test_public_ipv6_literal_is_pinned() -> None:
    """A public IPv6 literal keeps its explicit port."""
    pinned = await ssrf.resolve_checked("http://[2606:4700:4700::1111]:8080/", allow_private=False)
    assert (pinned.address, pinned.port) == ("2606:4700:4700::1111", 8080)


async def test_allow_private_lifts_the_rule() -> None:
    """With MENOS_CALLBACK_ALLOW_PRIVATE the loopback address and `localhost` are allowed."""
    literal = await ssrf.resolve_checked("http://127.0.0.1:8000/hook", allow_private=True)
    assert (literal.address, literal.port, literal.host) == ("127.0.0.1", 8000, "127.0.0.1")
    named = await ssrf.resolve_checked("http://localhost/hook", allow_private=True)
    assert named.host == "localhost"
    assert ipaddress.ip_address(named.address).is_loopback
    assert named.port == 80


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://8.8.8.8/file", "http"),
        ("file:///etc/passwd", "http"),
        ("https://user:secret@8.8.8.8/", "user-info"),
        ("https://user@8.8.8.8/", "user-info"),
        ("http:///path", "no host"),
        ("http://does-not-exist.invalid/", "cannot be resolved"),
    ],
)
async def test_unusable_urls_are_invalid_input(url: str, fragment: str) -> None:
    """Other schemes, user-info, a missing host or an unresolvable host are refused clearly."""
    with pytest.raises(errors.InvalidInput) as caught:
        await ssrf.resolve_checked(url, allow_private=True)
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8:0/", "http://8.8.8.8:65536/", "http://8.8.8.8:99999/"]
)
async def test_a_port_outside_the_range_is_refused(url: str) -> None:
    """Port 0 is not taken for the scheme's default, nor a port over 65535 passed on."""
    with pytest.raises(errors.InvalidInput) as caught:
        await ssrf.resolve_checked(url, allow_private=False, field="callback_url")
    assert caught.value.field == "callback_url"
    assert "port" in caught.value.message


async def test_refusal_names_the_callers_field() -> None:
    """A refused callback URL is reported on the `callback_url` field."""
    with pytest.raises(errors.InvalidInput) as caught:
        await ssrf.resolve_checked(
            "http://169.254.169.254/", allow_private=False, field="callback_url"
        )
    assert caught.value.field == "callback_url"


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text="ok")


async def test_transport_connects_to_the_checked_address_keeping_host() -> None:
    """The connection goes to the address that was checked; the request keeps its URL."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _ok(request)

    network = HandlerNetwork(handler)
    transport = ssrf.PinnedTransport(allow_private=True, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://localhost:8080/page?q=1")
    assert response.text == "ok"
    [(address, port)] = network.connected
    assert ipaddress.ip_address(address).is_loopback
    assert port == 8080
    [sent] = seen
    assert str(sent.url) == "http://localhost:8080/page?q=1"
    assert network.tls_names == []


async def test_transport_sets_tls_name_for_https() -> None:
    """For https the certificate is verified against the real host name, not the IP."""
    network = HandlerNetwork(_ok)
    transport = ssrf.PinnedTransport(allow_private=True, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get("https://localhost/secure")
    [(address, port)] = network.connected
    assert ipaddress.ip_address(address).is_loopback
    assert port == 443
    assert network.tls_names == ["localhost"]


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/",
        "http://8.8.8.8:99999/hook",  # a stored callback URL with no valid port
    ],
)
async def test_transport_refuses_before_connecting(url: str) -> None:
    """Without allow_private nothing connects to a private address, nor to a port outside
    1-65535 (refused clearly, not by the socket's OverflowError)."""
    network = HandlerNetwork(_ok)
    transport = ssrf.PinnedTransport(allow_private=False, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(errors.InvalidInput):
            await client.post(url)
    assert network.connected == []


@pytest.mark.parametrize(
    "url", ["http://user:secret@93.184.215.14/", "ftp://93.184.215.14/", "http:///nohost"]
)
async def test_transport_refuses_urls_the_rule_never_allows(url: str) -> None:
    """User-info, other schemes and host-less URLs are refused before any connection."""
    network = HandlerNetwork(_ok)
    transport = ssrf.PinnedTransport(allow_private=True, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises((errors.InvalidInput, httpx.UnsupportedProtocol)):
            await client.get(url)
    assert network.connected == []


async def test_transport_checks_every_redirect_hop() -> None:
    """A public page redirecting to cloud metadata is refused at the redirect hop."""
    redirect = httpx.Response(302, headers={"location": "http://169.254.169.254/latest/"})
    network = HandlerNetwork(lambda request: redirect)
    transport = ssrf.PinnedTransport(allow_private=False, network=network)
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
        with pytest.raises(errors.InvalidInput) as caught:
            await client.get("http://93.184.215.14/start")
    assert "169.254.169.254" in caught.value.message
    assert network.connected == [("93.184.215.14", 80)]


class _Refusing(HandlerNetwork):
    """Refuses connections to the given addresses (no route, nothing listening)."""

    def __init__(self, refused: set[str]) -> None:
        super().__init__(_ok)
        self.refused = refused
        self.tried: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.tried.append(host)
        if host in self.refused:
            raise httpcore.ConnectError("[Errno 101] Network is unreachable")
        return await super().connect_tcp(host, port, *args, **kwargs)


def _resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    async def resolve(host: str, port: int, field: str, **_: bool) -> list[ssrf.IPAddress]:
        return [ipaddress.ip_address(address) for address in addresses]

    monkeypatch.setattr(ssrf, "_resolve", resolve)


async def test_a_refused_address_falls_back_to_the_next_checked_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host with an IPv6 address first, on a machine with no IPv6 route, is reached over
    its IPv4 address, as other HTTP clients do."""
    _resolving_to(monkeypatch, "2606:4700:4700::1111", "93.184.215.14")
    network = _Refusing({"2606:4700:4700::1111"})
    transport = ssrf.PinnedTransport(allow_private=False, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://hooks.example/")).text == "ok"
    assert network.tried == ["2606:4700:4700::1111", "93.184.215.14"]


async def test_when_no_address_accepts_the_last_error_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every address is tried once, in resolver order; the failure is a connect error."""
    _resolving_to(monkeypatch, "2606:4700:4700::1111", "93.184.215.14")
    network = _Refusing({"2606:4700:4700::1111", "93.184.215.14"})
    transport = ssrf.PinnedTransport(allow_private=False, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://hooks.example/")
    assert network.tried == ["2606:4700:4700::1111", "93.184.215.14"]


async def test_one_private_address_among_public_ones_refuses_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback never reaches an address the rule refuses: the host is refused whole,
    before any connection."""
    _resolving_to(monkeypatch, "93.184.215.14", "127.0.0.1")
    network = _Refusing({"93.184.215.14"})
    transport = ssrf.PinnedTransport(allow_private=False, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(errors.InvalidInput):
            await client.get("http://hooks.example/")
    assert network.tried == []


async def test_a_refusal_does_not_tell_which_private_address_a_name_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The message reaches the submitter: it names the host, never the internal address."""
    _resolving_to(monkeypatch, "10.1.2.3")
    with pytest.raises(errors.InvalidInput) as caught:
        await ssrf.resolve_checked("http://vm.internal/", allow_private=False, field="callback_url")
    assert caught.value.message == "host vm.internal resolves to a non-public address"


async def test_kept_alive_connections_are_reused_per_name_only() -> None:
    """A second request to the same name reuses its connection; another name for the same
    address gets a connection (and, for https, a TLS check) of its own."""
    address = (await ssrf.resolve_checked("https://localhost/", allow_private=True)).address
    literal = f"[{address}]" if ":" in address else address
    network = HandlerNetwork(_ok)
    transport = ssrf.PinnedTransport(allow_private=True, network=network)
    async with httpx.AsyncClient(transport=transport) as client:
        for url in ("https://localhost/a", "https://localhost/b", f"https://{literal}/c"):
            assert (await client.get(url)).text == "ok"
    assert network.connected == [(address, 443), (address, 443)]
    assert network.tls_names == ["localhost", address]


async def test_transport_reaches_a_real_server_by_name() -> None:
    """Through the real httpx transport, a pinned request reaches the server and keeps Host."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    # Listen on the address `localhost` resolves to first: the one the transport pins.
    address = (await ssrf.resolve_checked("http://localhost/", allow_private=True)).address
    server = await asyncio.start_server(serve, host=address, port=0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport = ssrf.PinnedTransport(allow_private=True)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"http://localhost:{port}/x")
    finally:
        server.close()
        await server.wait_closed()
    assert response.text == "hello"
    assert f"host: localhost:{port}".encode() in received[0].lower()


class LocalhostTLS(NamedTuple):
    """A server certificate for the name `localhost` only, and the CA that signed it."""

    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path


@pytest.fixture
def localhost_cert(tmp_path: pathlib.Path) -> LocalhostTLS:
    """A certificate for the name `localhost` only (no IP address in it), made by trustme."""
    authority = trustme.CA()
    issued = authority.issue_cert("localhost")
    paths = LocalhostTLS(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    authority.cert_pem.write_to_path(str(paths.ca))
    issued.cert_chain_pems[0].write_to_path(str(paths.cert))
    issued.private_key_pem.write_to_path(str(paths.key))
    return paths


async def test_https_certificate_is_verified_against_the_name_not_the_ip(
    localhost_cert: LocalhostTLS,
) -> None:
    """A pinned https request verifies the site's certificate for its real name, and a
    kept-alive connection verified for one name never carries a request for another."""
    ca, cert, key = localhost_cert

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # keep the connection alive for as many requests as come
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
                await writer.drain()
        writer.close()

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    address = (await ssrf.resolve_checked("https://localhost/", allow_private=True)).address
    server = await asyncio.start_server(serve, host=address, port=0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    verify = ssl.create_default_context(cafile=str(ca))
    try:
        async with httpx.AsyncClient(
            transport=ssrf.PinnedTransport(allow_private=True, verify=verify)
        ) as client:
            response = await client.get(f"https://localhost:{port}/")
            assert response.text == "secure"
            # The same certificate does not cover the bare IP, so the open connection to the
            # same address is not reused for it: verification is really on, per name.
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                literal = f"[{address}]" if ":" in address else address
                await client.get(f"https://{literal}:{port}/")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_pooled_connection_the_server_closed_is_not_reused() -> None:
    """The transport's streams answer httpcore's readability check themselves: a kept-alive
    connection the server has closed since is seen as such, and the next request opens a new
    one instead of failing on the dead one."""
    connections = 0
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive promised, then closed by the server
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport = ssrf.PinnedTransport(allow_private=True)
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
            await closed.wait()
            for _ in range(200):  # until the server's FIN has reached the pooled socket
                if all(c.has_expired() for c in transport._pool.connections):
                    break
                await asyncio.sleep(0.01)  # the interval of this poll
            else:
                raise AssertionError("the closed connection never read as expired")
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
    finally:
        server.close()
        await server.wait_closed()
    assert connections == 2


async def test_a_host_written_with_its_root_dot_resolves_as_without_it() -> None:
    """`localhost.` passes the check at submission as `localhost` does: delivery and fetches
    resolve it the same way (the system resolver may not take the dot)."""
    assert await ssrf.checked_address("localhost.", 80, allow_private=True, field="url") in (
        "127.0.0.1",
        "::1",
    )
    with pytest.raises(errors.InvalidInput):
        await ssrf.checked_address("localhost.", 80, allow_private=False, field="url")


async def test_a_name_the_resolver_does_not_answer_for_is_unresolvable_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A silent DNS server does not hold the check: past RESOLVE_TIMEOUT_S the host is
    unresolvable, naming the field (a 400 at submission, a failed attempt at delivery)."""
    monkeypatch.setattr(ssrf, "RESOLVE_TIMEOUT_S", 0.05)
    resolver = SilentDNS()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    try:
        with pytest.raises(errors.Unresolvable) as refused:
            await asyncio.wait_for(
                ssrf.resolve_checked("https://slow.example/hook", allow_private=False, field="cb"),
                timeout=30,
            )
    finally:
        resolver.release.set()
    assert refused.value.field == "cb"
    assert "no answer within 0.05 s" in refused.value.message


async def test_time_spent_waiting_for_a_lookup_thread_does_not_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every lookup thread busy on a slow name, a name that resolves at once still
    resolves once a thread is free, however long that took: only the lookup is bounded."""
    monkeypatch.setattr(ssrf, "RESOLVE_TIMEOUT_S", 0.05)
    resolver = SilentDNS()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    asyncio.get_running_loop().set_default_executor(threads)
    try:
        slow = asyncio.create_task(
            ssrf.checked_address("slow.example", 443, allow_private=False, field="a")
        )
        fast = asyncio.create_task(
            ssrf.checked_address("fast.example", 443, allow_private=False, field="b")
        )
        with pytest.raises(errors.Unresolvable):
            await slow  # its thread stays blocked: the fast name waits for it
        await asyncio.sleep(0.2)  # longer than RESOLVE_TIMEOUT_S, all of it waiting for a thread
        resolver.release.set()
        assert await asyncio.wait_for(fast, timeout=30) == "93.184.216.34"
    finally:
        resolver.release.set()
        threads.shutdown(wait=False)


async def test_the_transports_lookups_do_not_wait_for_the_executors_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's page fetches and a dispatcher's deliveries resolve in threads of their own:
    with the executor's threads held by names a silent DNS server never answers for, the
    fetch of a page whose name resolves at once waited for one and ran out of time."""
    resolver = SilentDNS()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # as on a small machine
    asyncio.get_running_loop().set_default_executor(threads)
    transport = ssrf.PinnedTransport(allow_private=False, network=HandlerNetwork(_ok))
    try:
        held = asyncio.create_task(
            ssrf.checked_address("silent.example", 443, allow_private=False, field="a")
        )
        await asyncio.sleep(0.1)  # the executor's one thread waits on the silent name
        async with httpx.AsyncClient(transport=transport) as client:
            answer = await asyncio.wait_for(client.get("http://fast.example/page"), timeout=3)
        assert answer.text == "ok"
        assert not held.done()
    finally:
        resolver.release.set()
        with contextlib.suppress(errors.Unresolvable):
            await held
        threads.shutdown(wait=False)
